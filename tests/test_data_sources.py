import io
import json
import logging
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_backbones import tiny_tokenizer

from vlm.data import DataError, Example
from vlm.data.coco import CocoCaptions, KarpathyCaptions, VQAv2
from vlm.data.jsonl import JsonlSource
from vlm.data.mixture import Component, Mixture
from vlm.data.webdataset import WebDatasetSource, expand_shards
from vlm.prompts import END_OF_CHUNK, IMAGE_TOKEN, SPECIAL_TOKENS, caption, interleaved, sketch_to_html, vqa


def png(colour=(255, 0, 0), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def write_images(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png())


def write_lines(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def joined(example: Example) -> str:
    return "".join(segment.text for segment in example.segments)


CHAT = [{"role": "user", "content": "what is it?"}, {"role": "assistant", "content": "a cat"}]


# ---------------------------------------------------------------- JSONL manifests


def test_jsonl_reads_every_kind_and_resolves_paths(tmp_path):
    write_images(tmp_path, "a.png", "sub/b.png")
    manifest = write_lines(
        tmp_path / "m.jsonl",
        {"image": "a.png", "text": "a cat"},
        {"image": "sub/b.png", "question": "what?", "answer": "cat", "id": 7},  # unknown keys are ignored
        {"image": str(tmp_path / "a.png"), "dsl": "header { btn }"},
        {"images": ["a.png", "sub/b.png"], "conversation": [{"role": "user", "content": "<image>x<image>y"},
                                                            {"role": "assistant", "content": "z"}]},
        {"segments": [{"text": "intro"}, {"image": "a.png"}, {"text": "about a"}]},
        "",  # blank lines are not records
    )
    source = JsonlSource(manifest)
    assert len(source) == 5 and not source.skipped
    examples = list(source)
    assert examples[0].segments == caption("a cat") and examples[0].images == [tmp_path / "a.png"]
    assert examples[1].segments == vqa("what?", "cat") and examples[1].images == [tmp_path / "sub/b.png"]
    assert examples[2].segments == sketch_to_html("header { btn }") and examples[2].images == [tmp_path / "a.png"]
    assert joined(examples[3]) == f"User: {IMAGE_TOKEN}x{IMAGE_TOKEN}y\nAssistant: z{END_OF_CHUNK}\n"
    assert examples[3].images == [tmp_path / "a.png", tmp_path / "sub/b.png"]
    assert examples[4].segments == interleaved([{"text": "intro"}, {"image": 0}, {"text": "about a"}])
    assert [image.size for image in examples[3].load_images()] == [(8, 8), (8, 8)]
    assert source[1].segments == examples[1].segments


def test_jsonl_chat_without_markers_puts_images_first_and_uses_the_template(tmp_path):
    write_images(tmp_path, "a.png", "b.png")
    system = {"role": "system", "content": "be brief"}
    manifest = write_lines(tmp_path / "chat.jsonl", {"images": ["a.png", "b.png"], "conversation": [system, *CHAT]})
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    (example,) = JsonlSource(manifest, tokenizer=tokenizer)
    assert joined(example) == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n<image><image>what is it?<|im_end|>\n"
        "<|im_start|>assistant\na cat<|im_end|>\n"
    )
    assert [s.text for s in example.segments if s.target] == ["a cat<|im_end|>\n"]


def test_jsonl_kind_can_be_forced(tmp_path):
    write_images(tmp_path, "a.png")
    manifest = write_lines(tmp_path / "m.jsonl", {"image": "a.png", "text": "t", "question": "q", "answer": "a"})
    assert list(JsonlSource(manifest))[0].segments == vqa("q", "a")
    assert list(JsonlSource(manifest, kind="caption"))[0].segments == caption("t")
    with pytest.raises(ValueError, match="unknown kind 'captions'"):
        JsonlSource(manifest, kind="captions")


BAD_LINES = [
    ('{"image": "a.png", "text": "fine"}', None),
    ('{"image": "a.png", "text": ', "not valid JSON"),
    ('{"image": "gone.png", "text": "t"}', "image not found: .*gone.png"),
    ('["image", "text"]', "expected a JSON object, got list"),
    ('{"image": "a.png", "text": ""}', "field 'text' must be a non-empty string"),
    ('{"image": 3, "text": "t"}', "an image must be a non-empty path string, got 3"),
    ('{"picture": "a.png"}', "cannot tell the kind from keys"),
    ('{"images": ["a.png"], "conversation": [{"role": "user", "content": "<image><image>"}, '
     '{"role": "assistant", "content": "x"}]}', "2 <image> markers but 1 images"),
    ('{"conversation": [{"role": "user", "content": "hi"}]}', "nothing to learn"),
    ('{"conversation": [{"role": ["user"], "content": "hi"}]}', "conversation: message 0: role must be one of"),
    ('{"segments": [{"image": "a.png"}, {"image": "a.png", "text": "x"}]}', "segments: item 1"),
]


def test_jsonl_skip_mode_counts_what_it_skips(tmp_path, caplog):
    write_images(tmp_path, "a.png")
    manifest = write_lines(tmp_path / "m.jsonl", *(line for line, _ in BAD_LINES))
    with caplog.at_level(logging.WARNING, "vlm.data"):
        source = JsonlSource(manifest, on_error="skip")
    assert len(source) == 1
    assert source.skipped == Counter(bad_json=1, missing_image=1, bad_record=8)
    assert f"skipped {manifest}:2: not valid JSON" in caplog.text and "skipped 10 lines" in caplog.text


@pytest.mark.parametrize("line_number", range(2, len(BAD_LINES) + 1))
def test_jsonl_raise_mode_names_file_and_line(tmp_path, line_number):
    write_images(tmp_path, "a.png")
    line, problem = BAD_LINES[line_number - 1]
    manifest = write_lines(tmp_path / "m.jsonl", BAD_LINES[0][0], line)
    with pytest.raises(DataError, match=rf"m.jsonl:2: {problem}"):
        JsonlSource(manifest, on_error="raise")


def test_jsonl_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"empty.jsonl: no usable examples \(none skipped\)"):
        JsonlSource(write_lines(tmp_path / "empty.jsonl", "", "  "))
    with pytest.raises(DataError, match=r"no usable examples \(bad_json: 1, missing_image: 1\)"):
        JsonlSource(write_lines(tmp_path / "bad.jsonl", "{", {"image": "x.png", "text": "t"}))
    with pytest.raises(ValueError, match='on_error must be "skip" or "raise"'):
        JsonlSource(tmp_path / "bad.jsonl", on_error="ignore")


def json_lines():
    good = st.builds(lambda text: json.dumps({"image": "a.png", "text": text}), st.text(min_size=1).filter(str.strip))
    values = st.none() | st.integers() | st.text(max_size=8) | st.sampled_from(["a.png", "gone.png", IMAGE_TOKEN])
    keys = st.sampled_from(["image", "text", "role", "content"])
    items = st.dictionaries(keys, values | st.lists(values, max_size=2))
    records = st.dictionaries(
        st.sampled_from(["image", "images", "text", "question", "answer", "dsl", "conversation", "segments"]),
        values | st.lists(values | items, max_size=4),
    ).map(json.dumps)
    junk_text = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))).map(str.encode)
    junk_bytes = st.binary().map(lambda b: b.replace(b"\n", b""))
    return st.lists(st.one_of(good.map(str.encode), records.map(str.encode), junk_text, junk_bytes), max_size=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_lines())
def test_jsonl_skip_mode_never_crashes_on_random_lines(lines):
    with tempfile.TemporaryDirectory() as folder:
        write_images(Path(folder), "a.png")
        manifest = Path(folder) / "m.jsonl"
        manifest.write_bytes(b"\n".join(lines))
        records = sum(1 for line in lines if line.strip())
        try:
            source = JsonlSource(manifest, on_error="skip")
        except DataError as e:
            assert "no usable examples" in str(e)
            return
        assert len(source) + source.skipped.total() == records
        assert all(isinstance(example, Example) and example.images for example in source)


# ---------------------------------------------------------------- WebDataset shards


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def record(value) -> bytes:
    return json.dumps(value).encode()


def caption_samples(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [m for i in range(count)
            for m in ((f"{prefix}{i:03d}.json", record({"text": f"{prefix} {i}"})), (f"{prefix}{i:03d}.png", png()))]


def test_webdataset_groups_members_by_key(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("dir/a.json", record({"text": "a cat"})), ("dir/a.jpg", png()),
        ("b.png", png((0, 0, 255))), ("b.json", record({"question": "colour?", "answer": "blue"})), ("b.txt", b"x"),
        ("c.json", record({"images": ["0.png", "1.webp"], "conversation": CHAT})), ("c.0.png", png()),
        ("c.1.webp", png()),
    ])
    examples = list(WebDatasetSource(shard))
    assert [e.segments for e in examples[:2]] == [caption("a cat"), vqa("colour?", "blue")]
    assert examples[2].images == [png(), png()] and sum(s.is_image for s in examples[2].segments) == 2
    assert examples[1].load_images()[0].getpixel((0, 0)) == (0, 0, 255)


def test_webdataset_truncated_shard_is_counted_not_a_crash(tmp_path, caplog):
    members = caption_samples("x", 5)
    full = write_tar(tmp_path / "full.tar", members)
    with tarfile.open(full) as tar:
        middle_of_fourth_image = tar.getmember("x003.png").offset_data + 10
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:middle_of_fourth_image])
    second = write_tar(tmp_path / "second.tar", caption_samples("y", 2))
    with caplog.at_level(logging.WARNING, "vlm.data"):
        source = WebDatasetSource([cut, second])
        examples = list(source)
    assert [joined(e) for e in examples] == [f"<image>Output: {p} {i}<|endofchunk|>" for p, i in
                                             [("x", 0), ("x", 1), ("x", 2), ("y", 0), ("y", 1)]]
    assert source.skipped == Counter(truncated_shard=1) and "shard cut short after 3 samples" in caplog.text
    with pytest.raises(DataError, match=r"cut.tar: shard cut short after 3 samples"):
        list(WebDatasetSource(cut, on_error="raise"))


def test_webdataset_bad_samples_and_shards_are_skipped(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [
        ("a.json", b"{oops"), ("a.png", png()),
        ("b.json", record({"text": "no image"})),
        ("c.json", record({"text": "two images"})), ("c.0.png", png()), ("c.1.png", png()),
        ("d.png", png()),
        ("e.json", record({"text": "good"})), ("e.png", png()),
    ])
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    source = WebDatasetSource([shard, empty, tmp_path / "missing.tar"])
    assert [joined(e) for e in source] == ["<image>Output: good<|endofchunk|>"]
    assert source.skipped == Counter(bad_json=1, missing_image=2, bad_record=1, unreadable_shard=2)
    with pytest.raises(DataError, match=r"s.tar:a: a.json is not valid JSON"):
        list(WebDatasetSource(shard, on_error="raise"))
    with pytest.raises(DataError, match=r"no usable examples in 1 shards \(unreadable_shard: 1\)"):
        list(WebDatasetSource(empty))


def test_expand_shards(tmp_path):
    for i in (8, 9, 10):
        (tmp_path / f"shard-{i:03d}.tar").touch()
    expected = [tmp_path / f"shard-{i:03d}.tar" for i in (8, 9, 10)]
    assert expand_shards(str(tmp_path / "shard-{008..010}.tar")) == expected
    assert expand_shards(tmp_path / "shard-*.tar") == expected
    assert expand_shards([str(p) for p in expected]) == expected
    with pytest.raises(DataError, match="no shards match"):
        WebDatasetSource(str(tmp_path / "nothing-*.tar"))


# ---------------------------------------------------------------- COCO and VQAv2


def test_karpathy_split_selection(tmp_path):
    write_images(tmp_path, "train2014/t.jpg", "val2014/r.jpg", "val2014/v.jpg")

    def image(split, folder, name, *captions):
        return {"split": split, "filepath": folder, "filename": name, "sentences": [{"raw": c} for c in captions]}

    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [
        image("train", "train2014", "t.jpg", "a", "b"), image("restval", "val2014", "r.jpg", "c"),
        image("val", "val2014", "v.jpg", "d"), image("train", "train2014", "gone.jpg", "e"),
        image("train", "train2014", "t.jpg"),  # no sentences
    ]}))
    train = KarpathyCaptions(path, tmp_path)
    assert [e.segments for e in train] == [caption(c) for c in "abc"]
    assert train[2].images == [tmp_path / "val2014/r.jpg"]
    assert train.skipped == Counter(missing_image=1, bad_record=1)
    assert [joined(e) for e in KarpathyCaptions(path, tmp_path, split="val")] == [joined(Example(caption("d"), [0]))]
    with pytest.raises(DataError, match=r"no images in split \['tset'\]; the file has \['restval', 'train', 'val'\]"):
        KarpathyCaptions(path, tmp_path, split="tset")
    with pytest.raises(DataError, match=r"images\[3\].sentences\[0\]: image not found"):
        KarpathyCaptions(path, tmp_path, on_error="raise")


def test_coco_captions_json(tmp_path):
    write_images(tmp_path, "000000000001.jpg")
    path = tmp_path / "captions_train2017.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1}, {"image_id": 2, "caption": "x"}],
    }))
    source = CocoCaptions(path, tmp_path)
    assert [e.segments for e in source] == [caption("a cat")] and source[0].images == [tmp_path / "000000000001.jpg"]
    assert source.skipped == Counter(bad_record=2)
    with pytest.raises(DataError, match=r"annotations\[1\]: missing field 'caption'"):
        CocoCaptions(path, tmp_path, on_error="raise")


def test_vqav2_uses_the_most_common_answer(tmp_path):
    write_images(tmp_path, "COCO_train2014_000000000042.jpg")
    questions = tmp_path / "questions.json"
    annotations = tmp_path / "annotations.json"
    questions.write_text(json.dumps({"data_subtype": "train2014", "questions": [
        {"image_id": 42, "question": "what colour?", "question_id": 1},
        {"image_id": 42, "question": "how many?", "question_id": 2},
        {"image_id": 7, "question": "where?", "question_id": 3},
        {"image_id": 42, "question": "unannotated?", "question_id": 4},
    ]}))
    votes = {1: ["red"] * 3 + ["blue"] * 6 + ["green"], 2: ["2", "3", "3", "2"], 3: ["here"] * 10}
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": q, "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]}
        for q, answers in votes.items()
    ]}))
    source = VQAv2(questions, annotations, tmp_path)
    assert [e.segments for e in source] == [vqa("what colour?", "blue"), vqa("how many?", "2")]  # tie: first given
    assert source[0].images == [tmp_path / "COCO_train2014_000000000042.jpg"]
    assert source.skipped == Counter(missing_image=1, bad_record=1)


def test_coco_files_that_are_not_the_expected_json(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON \(line 2 column"):
        CocoCaptions(broken, tmp_path)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"questions": []}))
    with pytest.raises(DataError, match="q.json: no 'data_subtype'"):
        VQAv2(questions, questions, tmp_path)
    with pytest.raises(DataError, match=r"q.json: expected a JSON object with list\(s\) \['images'\]"):
        KarpathyCaptions(questions, tmp_path)


# ---------------------------------------------------------------- mixtures


@pytest.fixture
def sources(tmp_path):
    write_images(tmp_path, "a.png")
    manifest = write_lines(tmp_path / "m.jsonl", *({"image": "a.png", "text": f"map {i}"} for i in range(5)))
    shard = write_tar(tmp_path / "s.tar", caption_samples("stream", 3))
    return JsonlSource(manifest), WebDatasetSource(shard)


def make_mixture(sources, seed=0):
    jsonl, shards = sources
    return Mixture([Component("map", jsonl, weight=3.0, loss_weight=0.5), Component("stream", shards)], seed=seed)


def take(mixture, n) -> list[tuple[str, str, float]]:
    return [(e.source, joined(e), e.loss_weight) for e in (next(mixture) for _ in range(n))]


def test_mixture_is_deterministic_and_weighted(sources):
    drawn = take(make_mixture(sources), 400)
    assert drawn == take(make_mixture(sources), 400)
    assert drawn != take(make_mixture(sources, seed=1), 400)
    counts = Counter(source for source, _, _ in drawn)
    assert 0.68 < counts["map"] / 400 < 0.82  # weight 3 : 1
    assert {(source, weight) for source, _, weight in drawn} == {("map", 0.5), ("stream", 1.0)}


def test_mixture_epochs_shuffle_map_sources_and_cycle_streams(sources):
    drawn = take(make_mixture(sources), 400)
    maps = [text for source, text, _ in drawn if source == "map"]
    epochs = [maps[i : i + 5] for i in range(0, 15, 5)]
    assert all(sorted(epoch) == sorted(joined(e) for e in sources[0]) for epoch in epochs)  # each once per epoch
    assert len({tuple(epoch) for epoch in epochs}) > 1  # in a new order
    streams = [text for source, text, _ in drawn if source == "stream"]
    assert streams[:6] == [f"<image>Output: stream {i % 3}<|endofchunk|>" for i in range(6)]


@pytest.mark.parametrize("stop", [0, 1, 7, 23])
def test_mixture_resumes_exactly(sources, stop):
    mixture = make_mixture(sources)
    take(mixture, stop)
    state = json.loads(json.dumps(mixture.state_dict()))  # it survives a JSON round trip
    expected = take(mixture, 30)
    resumed = make_mixture(sources)
    resumed.load_state_dict(state)
    assert take(resumed, 30) == expected


def test_mixture_checks_its_setup(sources):
    jsonl, shards = sources
    with pytest.raises(ValueError, match="names must be unique"):
        Mixture([Component("a", jsonl), Component("a", shards)])
    with pytest.raises(ValueError, match="component 'a': weight must be finite and > 0"):
        Mixture([Component("a", jsonl, weight=0)])
    with pytest.raises(ValueError, match=r"this mixture has seed 0 and \['map', 'stream'\]"):
        make_mixture(sources).load_state_dict({"seed": 0, "step": 0, "sources": {"map": {}}})
