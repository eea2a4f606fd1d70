"""The training recipe: typos and bad values are errors that name the key, found before any weights load."""

import math
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny_backbones import tiny_tokenizer

from vlm.config import ConfigError
from vlm.data import Example
from vlm.data.easy_vqa import names_what_is_shown
from vlm.data.mixture import Component, Mixture
from vlm.prompts import IMAGE_TOKEN, SPECIAL_TOKENS, encode, vqa
from vlm.sketch import describe, generate_page
from vlm.train import cli, load_train_config, trainer
from vlm.train.config import SourceConfig
from vlm.train.metrics import plot_losses
from vlm.train.sources import (
    SketchPages,
    build_source,
    check_source,
    source_shares,
)
from vlm.train.trainer import lr_factor, shares_table

CONFIGS = Path(__file__).parent.parent / "configs"


def write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def recipe(tmp_path) -> dict:
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "text": "a cat"}\n')
    return {
        "model": {"lm": "registry:smollm2-135m-instruct", "num_latents": 16},
        "data": {"sources": [{"kind": "jsonl", "path": str(tmp_path / "train.jsonl")}]},
        "run": {"steps": 10, "output_dir": str(tmp_path / "run")},
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["model"].update(num_latens=8), "unknown config key 'model.num_latens'; did you mean 'num_latents'?"),
        (lambda r: r.update(optimm={"lr": 1}), "unknown config key 'optimm'; did you mean 'optim'?"),
        (lambda r: r["run"].update(batch_sise=4), "unknown config key 'run.batch_sise'; did you mean 'batch_size'?"),
        (lambda r: r["data"]["sources"][0].update(wieght=2), "'data.sources[0].wieght'; did you mean 'weight'?"),
        (lambda r: r["data"]["sources"][0].update(kind="jsnol"), "unknown kind 'jsnol'; did you mean 'jsonl'?"),
        (lambda r: r["data"]["sources"][0].update(options={"record": "vqa"}),
         "unknown option 'data.sources[0].options.record'; did you mean 'records'?"),
        (lambda r: r["data"]["sources"][0].update(path="missing.jsonl"), "data.sources[0].path: missing.jsonl does not exist"),
        (lambda r: r["data"]["sources"].append({"kind": "coco", "path": r["data"]["sources"][0]["path"]}),
         "a coco source needs options ['images']"),
        (lambda r: r["data"]["sources"].append({"kind": "sketch", "path": "x"}), "a sketch source takes no path"),
        (lambda r: r["run"].update(epochs=2), "set exactly one of run.steps and run.epochs"),
        (lambda r: r["run"].update(steps="ten"), "run.steps must be an integer, got 'ten'"),
        (lambda r: r.update(precision="fp8"), "precision must be one of ['fp32', 'bf16', 'fp16'], got 'fp8'"),
        (lambda r: r.update(schedule={"name": "linear"}), "schedule.name must be one of ['constant', 'cosine']"),
        (lambda r: r["run"].update(distributed="zero3"), "run.distributed must be one of ['ddp', 'fsdp']"),
        (lambda r: r["data"].update(sources=[]), "data.sources is empty"),
        (lambda r: r["run"].update(max_minutes=0), "run.max_minutes must be > 0 or null, got 0"),
        (lambda r: r["run"].update(data_workers=-1), "run.data_workers must be >= 0, got -1"),
        (lambda r: r["model"].update(colour_grid=-2), "model.colour_grid must be >= 0, got -2"),
        (lambda r: r.update(optim={"projection_lr": 0}), "optim.projection_lr must be > 0, got 0"),
        (lambda r: r.update(optim={"gate_lr": -1e-3}), "optim.gate_lr must be > 0, got -0.001"),
        (lambda r: r.update(optim={"train_only": []}), "optim.train_only must list parameter-name patterns"),
        (lambda r: r.update(optim={"train_only": "resampler.*"}), "optim.train_only must be a list"),
    ],
)
def test_a_bad_recipe_is_an_error_naming_the_key(tmp_path, recipe, edit, message):
    edit(recipe)
    with pytest.raises(ConfigError) as error:
        load_train_config(write(tmp_path, recipe))
    assert message in str(error.value)


def test_overrides_are_yaml_values_and_typos_in_them_are_named(tmp_path, recipe):
    path = write(tmp_path, recipe)
    config = load_train_config(path, ["optim.lr=3e-4", "model.image_size=[288, 512]", "data.sources.0.weight=2",
                                      "run.eval_every=null", "precision=bf16"])
    assert config.optim.lr == 3e-4 and config.model.image_size == (288, 512)
    assert config.data.sources[0].weight == 2.0 and config.data.sources[0].name == "jsonl"
    assert config.run.eval_every is None and config.precision == "bf16"
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'lr'\?"):
        load_train_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_train_config(path, ["optim.lr"])


def test_the_command_reports_a_typo_before_loading_any_weights(tmp_path, recipe, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "build_model", lambda config: pytest.fail("weights loaded for a bad config"))
    recipe["model"]["resampler_dept"] = 2
    assert cli.main([str(write(tmp_path, recipe))]) == 2
    assert "unknown config key 'model.resampler_dept'; did you mean 'resampler_depth'?" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny.yaml", "default.yaml", "default-stage.yaml", "default-chat-stage.yaml", "gpu-vit-l14-1b.yaml"])
def test_the_shipped_configs_are_valid(name, tmp_path, monkeypatch):
    # Their data paths are relative to the repository root, with pix2code's set beside the checkout
    # (../shared): an empty stand-in there, so the test does not depend on where the checkout lives.
    (tmp_path / "shared" / "data" / "pix2code-web" / "train").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    config = load_train_config(CONFIGS / name)
    assert config.data.sources and (config.run.steps or config.run.epochs)


def test_schedules_warm_up_then_hold_or_decay():
    cosine = [lr_factor(s, name="cosine", warmup=10, total=110, min_ratio=0.1) for s in range(110)]
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == 1.0 and cosine[10] == 1.0
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    assert cosine[60] == pytest.approx(0.55) and lr_factor(110, name="cosine", warmup=10, total=110, min_ratio=0.1) == pytest.approx(0.1)
    assert [lr_factor(s, name="constant", warmup=2, total=9, min_ratio=0) for s in (0, 1, 2, 8)] == [0.5, 1, 1, 1]


def test_sketch_pages_are_deterministic_and_cover_every_task():
    source = SketchPages(pages=30, seed=5, vocabulary="full", styles=["sketch", "wireframe"], image_size=[64, 96],
                         tasks={"html": 1, "question": 1, "caption": 1})
    first, again = source[3], source[3]
    assert first.segments == again.segments and first.images[0].tobytes() == again.images[0].tobytes()
    assert first.images[0].size == (96, 64)
    prompts = {next(s.text for s in source[i].segments if not s.special).split(":")[0] for i in range(30)}
    assert prompts == {"HTML", "Question", "Output"}
    with pytest.raises(ConfigError, match="browser"):
        SketchPages(pages=3, seed=0, vocabulary="full", styles=["browser"], tasks=None, image_size=None)


def test_sketch_chat_is_a_conversation_in_the_lms_chat_template():
    source = SketchPages(pages=40, seed=5, styles=["wireframe"], image_size=[64, 96], tasks={"chat": 1},
                         tokenizer=tiny_tokenizer())
    turns, described = [], 0
    for i in range(40):
        segments = source[i].segments
        text = "".join(s.text for s in segments)
        assert text.startswith(f"<|im_start|>user\n{IMAGE_TOKEN}") and text.count(IMAGE_TOKEN) == 1
        answers = [s.text for s in segments if s.target]  # each assistant turn, closed by <|im_end|>
        assert len(answers) == text.count("<|im_start|>assistant") and all(a.endswith("<|im_end|>\n") for a in answers)
        turns.append(len(answers))
        if "Describe this page." in text:
            assert f"{describe(generate_page(5 + i))}<|im_end|>\n" in answers
            described += 1
    assert set(turns) == {1, 2, 3} and described > 0
    again = source[3]  # fixed by the page's seed
    assert again.segments == source[3].segments and again.images[0].tobytes() == source[3].images[0].tobytes()


def test_pix2code_holds_out_its_last_tenth():
    data = Path(__file__).parent.parent.parent / "shared" / "data" / "pix2code-web"
    if not data.is_dir():
        pytest.skip("pix2code's web set is not beside the repository")
    train = build_source(SourceConfig(kind="pix2code", path=str(data)), tokenizer=None)
    held_out = build_source(SourceConfig(kind="pix2code", path=str(data), options={"split": "validation"}), tokenizer=None)
    assert (len(train), len(held_out)) == (630, 70)
    example = held_out[0]
    assert isinstance(example, Example) and example.segments[0].text == IMAGE_TOKEN
    assert "row" in example.segments[-2].text and Image.open(example.images[0]).size == (800, 460)


def test_easy_vqa_is_a_source_of_questions():
    check_source(SourceConfig(kind="easy_vqa", options={"split": "test"}), where="data.sources[0]")
    source = build_source(SourceConfig(kind="easy_vqa", options={"split": "test"}), tokenizer=None)
    example = source[0]
    assert len(source) > 1000 and Image.open(example.images[0]).size == (64, 64)
    assert "Question:" in "".join(s.text for s in example.segments)



@pytest.mark.parametrize("question, answer, shown", [
    ("is there a red shape?", "yes", True), ("is there a red shape?", "no", False),
    ("is there not a circle in the image?", "no", True), ("is no gray shape present?", "yes", False),
    ("does the image not contain a triangle?", "yes", False), ("is a triangle present?", "yes", True),
])
def test_easy_vqa_tells_which_yes_no_questions_name_what_is_shown(question, answer, shown):
    assert names_what_is_shown(question, answer) is shown


def test_balanced_easy_vqa_asks_about_shown_and_missing_things_equally():
    plain = build_source(SourceConfig(kind="easy_vqa", options={"split": "test"}), tokenizer=None)
    balanced = build_source(SourceConfig(kind="easy_vqa", options={"split": "test", "balanced": True}), tokenizer=None)

    def shown_and_missing(items):
        yes_no = [names_what_is_shown(q, a) for q, a, _ in items if a in ("yes", "no")]
        return sum(yes_no), len(yes_no) - sum(yes_no)

    shown, missing = shown_and_missing(plain.items)
    assert shown < missing / 3  # the data leans to absent things
    assert shown_and_missing(balanced.items) == (missing, missing)
    assert balanced.items[: len(plain)] == plain.items and set(balanced.items) == set(plain.items)
    with pytest.raises(ConfigError, match="balanced must be true or false"):
        build_source(SourceConfig(kind="easy_vqa", options={"balanced": "yes"}), tokenizer=None)


def test_the_loss_plot_draws_both_curves():
    image = plot_losses([(1, 5.0), (2, 3.0), (3, math.nan), (4, 1.0)], [(4, 1.5)])
    colours = {colour for _, colour in image.getcolors(maxcolors=100_000)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours


class Answers:
    """A map-style stand-in source: questions whose answers are `words` words long."""

    def __init__(self, words: int):
        self.answer = " ".join(["row"] * words)

    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int) -> Example:
        return Example(vqa(f"question {index}?", self.answer), [Image.new("RGB", (8, 8))])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def test_source_shares_count_target_tokens_times_loss_weight():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    targets = {n: len(encode(vqa("q?", Answers(n).answer)[2:], tokenizer, max_length=None).labels) for n in (1, 40)}
    mixture = Mixture([
        Component("pages", Answers(40), weight=1),
        Component("answers", Answers(1), weight=3, loss_weight=2),
        Component("stream", iter([Answers(1)[0]] * 5), weight=1),  # a stream: its first examples are read
    ], seed=0)
    shares = source_shares(mixture, tokenizer, max_length=None, per_source=8)

    assert [s.targets for s in shares] == [targets[40], targets[1], targets[1]]
    assert [s.examples for s in shares] == [0.2, 0.6, 0.2]
    losses = [targets[40], 6 * targets[1], targets[1]]
    assert [s.loss for s in shares] == pytest.approx([loss / sum(losses) for loss in losses])
    table = shares_table(shares).splitlines()
    assert len(table) == 4 and table[2].split()[:3] == ["answers", "0.600", f"{shares[1].loss:.3f}"]


def test_source_shares_leave_out_examples_too_long_to_train_on():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    mixture = Mixture([Component("pages", Answers(40)), Component("answers", Answers(1))], seed=0)
    pages, answers = source_shares(mixture, tokenizer, max_length=40, per_source=4)  # answers: 26 tokens, pages: 104
    assert pages.targets == 0 and answers.targets > 0 and answers.loss == 1.0
