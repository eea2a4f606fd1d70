"""Caption metrics against pycocoevalcap, the PTB tokeniser against its Java tokenizer, caption readers."""

import json
import random
import shutil

import pytest
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vlm.eval.caption_metrics import bleu, cider_d, ptb_tokenize, rouge_l, score_captions
from vlm.eval.datasets import load_captions, load_coco_captions, load_karpathy_captions

TOLERANCE = 1e-9  # the issue asks for 1e-6; the code computes the same sums, so hold it tighter

_PEOPLE = ["man", "woman", "young boy", "little girl", "group of people", "skateboarder", "baseball player",
           "chef", "surfer", "couple"]
_ANIMALS = ["dog", "cat", "brown horse", "giraffe", "zebra", "elephant", "bird", "teddy bear"]
_ACTIONS = ["riding", "holding", "sitting on", "standing next to", "looking at", "walking past", "playing with"]
_OBJECTS = ["a surfboard", "a red frisbee", "a slice of pizza", "a black-and-white umbrella", "two bananas",
            "a hot dog", "a kite", "a laptop", "a 12-inch sandwich", "an ice-cream cone", 'a "stop" sign',
            "a wooden bench", "3 oranges"]
_PLACES = ["on the beach", "in a kitchen", "at the park", "on a busy street", "in a grassy field",
           "near the water", "under a tree", "in front of a building (downtown)"]


def _describe(scene: tuple, rng: random.Random) -> str:
    """One COCO-style sentence about a scene, with the variety real annotators produce."""
    subject, action, obj, place = scene
    article = "an" if subject[0] in "aeiou" else "a"
    subject = rng.choice([f"{article} {subject}", f"the {subject}", f"{article} {subject} who's smiling",
                          f"{article} {subject}'s friend", f"{article} {rng.choice(['happy', 'tall'])} {subject}"])
    text = f"{subject} {rng.choice(['is ', '', 'that is '])}{action} {obj}"
    if rng.random() < 0.8:
        text += rng.choice([" ", ", "]) + place
    if rng.random() < 0.15:
        text += rng.choice(["; it isn't raining", ": a nice day", " and they're happy", " at 5 p.m."])
    text += rng.choice([".", ".", "", " .", "!"])
    return text[0].upper() + text[1:] if rng.random() < 0.8 else text


def make_captions(num_images: int = 60, seed: int = 0) -> tuple[dict, dict]:
    """Raw references (3 to 7 per image) and one candidate per image, of every kind a model writes."""
    rng = random.Random(seed)

    def scene():
        return (rng.choice(_PEOPLE + _ANIMALS), rng.choice(_ACTIONS), rng.choice(_OBJECTS), rng.choice(_PLACES))

    references, candidates = {}, {}
    for image_id in range(num_images):
        truth = scene()
        references[image_id] = [_describe(truth, rng) for _ in range(rng.randint(3, 7))]
        kind = image_id % 7
        candidates[image_id] = [
            _describe(truth, rng),  # a good paraphrase
            references[image_id][0],  # a copy of a reference
            _describe(scene(), rng),  # another scene
            f"a {truth[0]}",  # too short
            f"a {truth[0]} a {truth[0]} a {truth[0]} {truth[1]}",  # repetitive
            "",  # nothing
            truth[0].split()[-1],  # a single word
        ][kind]
    return references, candidates


@pytest.fixture(scope="module")
def tokenized():
    references, candidates = make_captions()
    return ({k: [ptb_tokenize(r) for r in refs] for k, refs in references.items()},
            {k: ptb_tokenize(c) for k, c in candidates.items()})


def test_fixture_is_large_and_varied(tokenized):
    references, candidates = tokenized
    assert len(references) >= 50 and all(len(refs) >= 3 for refs in references.values())
    assert "" in candidates.values() and len(set(candidates.values())) > 40


def test_bleu_matches_pycocoevalcap(tokenized):
    references, candidates = tokenized
    theirs, theirs_per_image = Bleu(4).compute_score(
        references, {k: [c] for k, c in candidates.items()}, verbose=0)
    ours, ours_per_image = bleu(references, candidates)
    assert ours == pytest.approx(theirs, abs=TOLERANCE, rel=0)
    for i, key in enumerate(references):
        assert ours_per_image[key] == pytest.approx([theirs_per_image[k][i] for k in range(4)], abs=TOLERANCE, rel=0)


@pytest.mark.parametrize("ours_fn, theirs_cls", [(cider_d, Cider), (rouge_l, Rouge)], ids=["cider_d", "rouge_l"])
def test_cider_d_and_rouge_l_match_pycocoevalcap(tokenized, ours_fn, theirs_cls):
    references, candidates = tokenized
    theirs, theirs_per_image = theirs_cls().compute_score(references, {k: [c] for k, c in candidates.items()})
    ours, ours_per_image = ours_fn(references, candidates)
    assert ours == pytest.approx(theirs, abs=TOLERANCE, rel=0)
    assert [ours_per_image[k] for k in references] == pytest.approx(list(theirs_per_image), abs=TOLERANCE, rel=0)
    assert 0 < ours and max(ours_per_image.values()) > 2 * min(ours_per_image.values())  # a real spread


def test_hand_computed_bleu_and_cider():
    references = {"a": ["a cat sits on the mat"], "b": ["a dog runs"]}
    perfect = bleu(references, {"a": "a cat sits on the mat", "b": "a dog runs"})[0]
    assert perfect == pytest.approx([1.0] * 4, abs=1e-6)
    # half the unigrams right, no bigram right, same length: BLEU-1 = 0.5
    assert bleu({"a": ["a b c d"]}, {"a": "a x c y"})[1]["a"][0] == pytest.approx(0.5, abs=1e-9)
    # a candidate equal to the only reference of each image, but every n-gram occurs in every
    # image, so idf = log(2) - log(2) = 0 and CIDEr-D is zero
    assert cider_d({1: ["a b"], 2: ["a b"]}, {1: "a b", 2: "a b"})[0] == 0.0


def test_metrics_reject_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="same images"):
        bleu({1: ["a"]}, {2: "a"})
    with pytest.raises(ValueError, match="no reference captions"):
        cider_d({1: []}, {1: "a"})


# The Java PTBTokenizer (CoreNLP 3.4.1, as pycocoevalcap calls it) followed by pycocoevalcap's
# punctuation filter gives these; each line was checked against the jar.
PTB_CASES = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "A dog's toy isn't here, don't worry!": "a dog 's toy is n't here do n't worry",
    '"Hello," she said (quietly) [really] {yes}.':
        "hello she said -lrb- quietly -rrb- -lsb- really -rsb- -lcb- yes -rcb-",
    "The U.S. flag... and Mr. Smith's car -- fast.": "the u.s. flag and mr. smith 's car fast",
    "It costs $5.50 or 1,000 dollars at 3:30 p.m.": "it costs $ 5.50 or 1,000 dollars at 3:30 p.m.",
    "A black-and-white photo of a cat/dog & a bird.": "a black-and-white photo of a cat/dog & a bird",
    "I cannot go; we're gonna wanna see 'em.": "i can not go we 're gon na wan na see 'em",
    "It's 5 o'clock, y'all.": "it 's 5 o'clock y' all",
    "A sign with the letter b. the end": "a sign with the letter b. the end",
    "Vitamin C. The end": "vitamin c the end",
    "A St. Bernard dog and Jan. 5 etc.": "a st. bernard dog and jan. 5 etc.",
    "The dog is no. 1 but the answer is no.": "the dog is no. 1 but the answer is no",
    "A 1950's car and the '80s": "a 1950 's car and the '80s",
    "The dogs' bowls and the boss's desk": "the dogs bowls and the boss 's desk",
    "hello!!! what?! ok??": "hello !!! what ?! ok ??",
    "A 5-year-old in a 3-D movie; an x-ray, a T-shirt.": "a 5-year-old in a 3-d movie an x-ray a t-shirt",
    "A 3.5mm jack, 12:30pm and a 10-ft. pole": "a 3.5 mm jack 12:30 pm and a 10-ft pole",
    "3 1/2 cups and 1/2 cup": "3\u00a01/2 cups and 1/2 cup",
    "The dog\u2019s bone, \u201cquoted\u201d text \u2014 a dash\u2026": "the dog 's bone quoted text a dash",
    "A caf\u00e9's menu with AT&T and US$5": "a caf\u00e9 's menu with at&t and us$ 5",
    "A pizza with cheese.Another one": "a pizza with cheese.another one",
    "rock 'n' roll and ma'am, a 'fancy' hat": "rock 'n' roll and ma'am a fancy hat",
    "A man -- a woman - a child ----- done": "a man a woman a child ----- done",
}


def test_ptb_tokenize_hand_checked_cases():
    for caption, expected in PTB_CASES.items():
        assert ptb_tokenize(caption) == expected, caption


def test_ptb_tokenize_treats_the_caption_end_as_a_sentence_end():
    # Java looks past the caption into the next one; we assume it opens a sentence ("A ...").
    assert ptb_tokenize("A jar of vitamin c.") == "a jar of vitamin c"
    assert ptb_tokenize("A man in the U.S.") == "a man in the u.s."


def _java_ptb_tokenizer():
    if shutil.which("java") is None:
        pytest.skip("Java is not installed; the hand-checked cases above still run")
    return PTBTokenizer()


def test_ptb_tokenize_matches_java_tokenizer():
    tokenizer = _java_ptb_tokenizer()
    references, candidates = make_captions()
    captions = list(PTB_CASES) + [c for refs in references.values() for c in refs] + list(candidates.values())
    captions.append("A last line that does not end in an initial.")  # the Java tokenizer sees EOF after it
    java = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    for i, caption in enumerate(captions):
        assert ptb_tokenize(caption) == java[i][0], caption


def test_score_captions_matches_cocoevalcap_pipeline():
    """Raw text in, scores out: our tokeniser and metrics against pycocoevalcap's Java tokenizer and scorers."""
    tokenizer = _java_ptb_tokenizer()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    references, candidates = make_captions(seed=1)
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    scores = score_captions(references, candidates)
    bleu_scores, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        assert scores.corpus[f"BLEU-{k + 1}"] == pytest.approx(bleu_scores[k], abs=TOLERANCE, rel=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    assert scores.corpus["CIDEr-D"] == pytest.approx(cider, abs=TOLERANCE, rel=0)
    assert scores.corpus["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=TOLERANCE, rel=0)
    for i, key in enumerate(gts):
        assert scores.per_image[key]["CIDEr-D"] == pytest.approx(cider_per_image[i], abs=TOLERANCE, rel=0)
        assert scores.per_image[key]["BLEU-4"] == pytest.approx(bleu_per_image[3][i], abs=TOLERANCE, rel=0)


# ---------------------------------------------------------------------------------------
# Caption readers

def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)


def _karpathy(tmp_path):
    _image(tmp_path / "images" / "val2014" / "COCO_val2014_000000000001.jpg")
    _image(tmp_path / "images" / "COCO_train2014_000000000002.jpg")  # flat layout works too
    _image(tmp_path / "images" / "val2014" / "COCO_val2014_000000000003.jpg")
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000001.jpg", "split": "test", "cocoid": 1,
         "sentences": [{"raw": "A cat."}, {"raw": "A small cat."}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000002.jpg", "split": "train", "cocoid": 2,
         "sentences": [{"raw": "A dog."}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000003.jpg", "split": "restval", "cocoid": 3,
         "sentences": [{"raw": "A bird."}]},
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path


def test_karpathy_reader_filters_splits_and_resolves_images(tmp_path):
    path = _karpathy(tmp_path)
    [test] = load_captions(path, tmp_path / "images")
    assert (test.image_id, test.references) == (1, ("A cat.", "A small cat."))
    assert test.image_path == tmp_path / "images" / "val2014" / "COCO_val2014_000000000001.jpg"
    train = load_karpathy_captions(path, tmp_path / "images", split=("train", "restval"))
    assert [e.image_id for e in train] == [2, 3]
    assert train[0].image_path == tmp_path / "images" / "COCO_train2014_000000000002.jpg"
    with pytest.raises(ValueError, match="no images in split"):
        load_karpathy_captions(path, tmp_path / "images", split="val")


def test_coco_reader_groups_captions_by_image(tmp_path):
    _image(tmp_path / "images" / "val2014" / "COCO_val2014_000000000007.jpg")
    _image(tmp_path / "images" / "COCO_val2014_000000000008.jpg")
    data = {"images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
                       {"id": 8, "file_name": "COCO_val2014_000000000008.jpg"}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "One."}, {"image_id": 8, "id": 2, "caption": "Two."},
                            {"image_id": 7, "id": 3, "caption": "Three."}]}
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    examples = load_captions(path, tmp_path / "images")
    assert [(e.image_id, e.references) for e in examples] == [(7, ("One.", "Three.")), (8, ("Two.",))]
    assert examples[0].image_path.parent.name == "val2014"
    with pytest.raises(ValueError, match="no splits"):
        load_captions(path, tmp_path / "images", split="test")
    data["images"].append({"id": 9, "file_name": "COCO_val2014_000000000009.jpg"})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="have no caption"):
        load_coco_captions(path, tmp_path / "images")


def test_caption_readers_give_clear_errors(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"questions": []}))
    with pytest.raises(ValueError, match="neither a Karpathy split file .* nor a COCO captions file"):
        load_captions(other, tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_captions(broken, tmp_path)
    path = _karpathy(tmp_path)
    with pytest.raises(FileNotFoundError, match="no image file for image 1"):
        load_captions(path, tmp_path / "elsewhere")
