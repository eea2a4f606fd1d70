"""Few-shot machinery: prompt formats, answer clean-up, demo selection, and the runner end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.eval.caption_metrics import score_captions
from vlm.eval.datasets import CaptionExample, VQAExample
from vlm.eval.fewshot import (RICES, RandomDemos, caption_prompt, postprocess_answer, postprocess_caption,
                              vqa_prompt)
from vlm.eval.runner import evaluate_captioning, evaluate_vqa
from vlm.eval.vqa_metrics import vqa_accuracy
from vlm.prompts import END_OF_CHUNK, IMAGE_TOKEN


def test_prompt_formats_are_openflamingos_with_the_training_spacing():
    assert caption_prompt("A cat on a mat.") == "<image>Output: A cat on a mat.<|endofchunk|>"
    assert caption_prompt() == "<image>Output:"
    assert vqa_prompt("What is it?", "cat") == "<image>Question:What is it? Short answer: cat<|endofchunk|>"
    assert vqa_prompt("What is it?") == "<image>Question:What is it? Short answer:"
    assert caption_prompt().startswith(IMAGE_TOKEN) and vqa_prompt("q", "a").endswith(END_OF_CHUNK)


@pytest.mark.parametrize("generated, caption", [
    (" A dog on a bench.<|endofchunk|><image>Output:A cat", "A dog on a bench."),
    ('A "big" dog\nOutput: more', "A big dog"),
    ("a dog Output: a cat", "a dog"),
    ("a dog Question: what", "a dog"),
])
def test_caption_postprocessing(generated, caption):
    assert postprocess_caption(generated) == caption


@pytest.mark.parametrize("generated, answer", [
    (" yes<|endofchunk|>", "yes"),
    ("two Question: how many", "two"),
    ("red, white and blue", "red"),
    ("blue\nQuestion:", "blue"),
    ("cat Short answer: dog", "cat"),
    ("cat Output:", "cat"),
])
def test_answer_postprocessing(generated, answer):
    assert postprocess_answer(generated) == answer


def test_random_demos_are_seeded_and_never_show_the_query_image():
    image_ids = [i // 3 for i in range(300)]  # 100 images, three support items each
    picks = RandomDemos(image_ids, seed=7).select(list(range(100)), [None] * 100, 8)
    assert picks == RandomDemos(image_ids, seed=7).select(list(range(100)), [None] * 100, 8)
    # the same query gets the same demos in any batch, in any position
    assert RandomDemos(image_ids, seed=7).select([42], [None], 8) == [picks[42]]
    assert picks != RandomDemos(image_ids, seed=8).select(list(range(100)), [None] * 100, 8)
    for query, chosen in enumerate(picks):
        assert len(set(chosen)) == 8
        assert all(image_ids[i] != query for i in chosen)
    # a query image that is not in the support set can use every item
    assert len(RandomDemos([0, 1, 2], seed=0).select(["new"], [None], 3)[0]) == 3


def test_random_demos_refuse_when_the_support_set_is_too_small():
    with pytest.raises(ValueError, match="only 2 items showing other images"):
        RandomDemos([0, 0, 1, 2], seed=0).select([0], [None], 3)


def _colour_features(images):
    return torch.tensor(np.stack([np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0) for image in images]))


def _solid(colour):
    return Image.new("RGB", (2, 2), colour)


def test_rices_picks_the_most_similar_support_images_most_similar_last():
    rng = np.random.default_rng(0)
    support_colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(40)]
    image_ids = list(range(40))
    rices = RICES(_colour_features([_solid(c) for c in support_colours]), image_ids, embed=_colour_features)
    queries = [(250, 10, 10), (10, 250, 10), support_colours[5]]
    chosen = rices.select(["q0", "q1", 5], [_solid(c) for c in queries], 4)
    support = torch.nn.functional.normalize(_colour_features([_solid(c) for c in support_colours]), dim=-1)
    for query, picked, own_image in zip(queries, chosen, ["q0", "q1", 5]):
        q = torch.nn.functional.normalize(_colour_features([_solid(query)]), dim=-1)[0]
        similarity = (support @ q).tolist()
        by_similarity = sorted((i for i in image_ids if i != own_image), key=lambda i: -similarity[i])
        assert picked == by_similarity[:4][::-1]  # the four nearest, nearest last
    assert 5 not in chosen[2]  # its own image is excluded, although it is the most similar


def test_rices_validates_and_caches_features(tmp_path):
    with pytest.raises(ValueError, match="num_support=3"):
        RICES(torch.zeros(2, 3), [0, 1, 2], embed=_colour_features)
    paths = []
    for i, colour in enumerate(["red", "green", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        _solid(colour).save(paths[-1])
    calls = []

    def embed(images):
        calls.append(len(images))
        return _colour_features(images)

    support_paths = [paths[0], paths[1], paths[1], paths[2]]  # two questions on one image
    built = RICES.build(support_paths, [0, 1, 1, 2], embed=embed, cache=tmp_path / "f.pt", progress=False)
    assert sum(calls) == 3 and built.features.shape == (4, 3)
    cached = RICES.build(support_paths, [0, 1, 1, 2], embed=embed, cache=tmp_path / "f.pt", progress=False)
    assert sum(calls) == 3 and torch.equal(cached.features, built.features)
    with pytest.raises(ValueError, match="only 2 items"):
        cached.select([1], [_solid("green")], 3)


# ---------------------------------------------------------------------------------------
# The runner, driven by a fake model whose answers are known

def _image_files(tmp_path, name, colours):
    """Paths of solid-colour PNGs (PNG keeps the colour exact, so it identifies the image)."""
    paths = []
    for i, colour in enumerate(colours):
        paths.append(tmp_path / f"{name}{i}.png")
        _solid(colour).save(paths[-1])
    return paths


class FakeCaptioner:
    """Writes a known caption for each query image, then rambles on as a real model would."""

    def __init__(self, captions_by_colour):
        self.captions_by_colour, self.calls = captions_by_colour, []

    def __call__(self, prompts, images):
        self.calls.append((prompts, images))
        return [f" {self.captions_by_colour[imgs[-1].getpixel((0, 0))]}{END_OF_CHUNK}<image>Output:a bus"
                for imgs in images]


def test_captioning_end_to_end(tmp_path, capsys):
    query_paths = _image_files(tmp_path, "query", [(10 * i, 0, 0) for i in range(5)])
    support_paths = _image_files(tmp_path, "support", [(128 + 10 * i, 0, 0) for i in range(6)])
    references = [["A red square.", "A square that is red."], ["A dark square.", "A black box."],
                  ["Some red.", "A red image."], ["A plain square.", "An empty picture."], ["Red.", "Red!"]]
    examples = [CaptionExample(100 + i, p, tuple(r)) for i, (p, r) in enumerate(zip(query_paths, references))]
    support = [CaptionExample(200 + i, p, (f"Support caption {i}.", "x")) for i, p in enumerate(support_paths)]
    answers = ["a red square", "a black box", "red", "a square", "red red red"]
    model = FakeCaptioner({(10 * i, 0, 0): answer for i, answer in enumerate(answers)})

    report = evaluate_captioning(examples, generate=model, support=support, shots=(0, 2), batch_size=2,
                                 output=tmp_path / "run" / "results.json", progress=False)

    zero, two = report.results
    assert [item["prediction"] for item in zero.items] == answers
    expected = score_captions({e.image_id: list(e.references) for e in examples},
                              {e.image_id: a for e, a in zip(examples, answers)})
    assert zero.metrics == pytest.approx({name: 100 * v for name, v in expected.corpus.items()})
    assert zero.items[0]["scores"] == pytest.approx({n: 100 * v for n, v in expected.per_image[100].items()})

    zero_prompts = [p for prompts, _ in model.calls[:3] for p in prompts]
    two_shot_calls = model.calls[3:]
    for prompt, item in zip(zero_prompts, zero.items):  # two text-only demos, then the query
        demos = "".join(f"Output: Support caption {i - 200}.{END_OF_CHUNK}" for i in item["demos"])
        assert len(item["demos"]) == 2 and prompt == demos + "<image>Output:"
    assert all(len(images) == 1 for _, batch in model.calls[:3] for images in batch)
    prompts = [p for batch, _ in two_shot_calls for p in batch]
    image_lists = [images for _, batch in two_shot_calls for images in batch]
    for prompt, images, item in zip(prompts, image_lists, two.items):
        demos = "".join(caption_prompt(f"Support caption {i - 200}.") for i in item["demos"])
        assert prompt == demos + "<image>Output:"
        assert prompt.count(IMAGE_TOKEN) == len(images) == 3
        assert [im.getpixel((0, 0))[0] for im in images[:2]] == [128 + 10 * (i - 200) for i in item["demos"]]

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["shots"] for r in saved["results"]] == [0, 2]
    assert saved["results"][1]["items"][4]["output"].startswith(" red red red")
    table = capsys.readouterr().out
    assert "CIDEr-D" in table and table.count("\n") >= 3


def test_vqa_end_to_end_with_rices(tmp_path):
    query_colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    query_paths = _image_files(tmp_path, "query", query_colours)
    support_paths = _image_files(tmp_path, "support", [(0, 0, 250), (120, 120, 120), (0, 250, 0), (250, 0, 0)])
    examples = [VQAExample(1, 10, query_paths[0], "How many?", tuple(["2"] * 3 + ["3"] * 7), "number"),
                VQAExample(2, 11, query_paths[1], "What color?", tuple(["red"] * 10), "other"),
                VQAExample(3, 12, query_paths[2], "Is it red?", tuple(["yes"] * 9 + ["no"]), "yes/no")]
    support = [VQAExample(50 + i, 20 + i, p, f"Support {i}?", ("yes", "no", "no")) for i, p in enumerate(support_paths)]
    outputs = dict(zip(query_colours, ["Two, I think\nQuestion: more", "red<|endofchunk|>", "No"]))
    prompts_seen = []

    def model(prompts, images):
        prompts_seen.extend(prompts)
        return [outputs[imgs[-1].getpixel((0, 0))] for imgs in images]

    report = evaluate_vqa(examples, generate=model, support=support, shots=(1,), demos="rices",
                          embed=_colour_features, progress=False)

    [result] = report.results
    assert [item["prediction"] for item in result.items] == ["Two", "red", "No"]
    assert [item["scores"]["accuracy"] for item in result.items] == pytest.approx([90.0, 100.0, 30.0])
    assert result.metrics == pytest.approx({"accuracy": (90 + 100 + 30) / 3, "accuracy[number]": 90.0,
                                            "accuracy[other]": 100.0, "accuracy[yes/no]": 30.0})
    assert result.items[0]["scores"]["accuracy"] == pytest.approx(100 * vqa_accuracy("Two", examples[0].answers))
    # RICES shows each query the support image of its own hue: red, green, blue
    assert [item["demos"] for item in result.items] == [[53], [52], [50]]
    assert prompts_seen[0] == ("<image>Question:Support 3? Short answer: no<|endofchunk|>"
                               "<image>Question:How many? Short answer:")


def test_runner_rejects_bad_settings(tmp_path):
    [path] = _image_files(tmp_path, "query", ["red"])
    examples = [CaptionExample(1, path, ("A square.",))]

    def echo(prompts, images):
        return ["a square"] * len(prompts)

    with pytest.raises(ValueError, match="support set is empty"):
        evaluate_captioning(examples, generate=echo, shots=(4,), progress=False)
    with pytest.raises(ValueError, match="needs an `embed`"):
        evaluate_captioning(examples, generate=echo, support=examples, shots=(4,), demos="rices", progress=False)
    with pytest.raises(ValueError, match="shots must list counts >= 0"):
        evaluate_captioning(examples, generate=echo, shots=(), progress=False)
    with pytest.raises(ValueError, match="'random' or 'rices'"):
        evaluate_captioning(examples, generate=echo, demos="nearest", progress=False)
    with pytest.raises(ValueError, match="returned 0 texts for 1 prompts"):
        evaluate_captioning(examples, generate=lambda p, i: [], shots=(0,), zero_shot_text_demos=0, progress=False)
    with pytest.raises(ValueError, match="1 image ids repeat"):
        evaluate_captioning(examples * 2, generate=echo, zero_shot_text_demos=0, progress=False)
    report = evaluate_captioning(examples, generate=echo, shots=(0,), zero_shot_text_demos=0, progress=False)
    assert report.results[0].items[0]["prediction"] == "a square"
