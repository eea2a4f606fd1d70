"""Held-out evaluation sets (vlm.eval.generated, `vlm eval write-sets`): they load back with the readers,
are reproducible and disjoint from training's pages, and every printed command runs on the tiny model."""

import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_cli import FAST, ONE_THREAD, ROOT, json_lines, one_line_error, run, tiny_model  # noqa: F401  (a fixture)

from vlm.eval import HELD_OUT_SEED, load_captions, load_vqa, write_easy_vqa, write_page_sets
from vlm.eval.generated import PAGE_STYLES, answer_type, question_type
from vlm.sketch import describe, generate_page, load_samples, to_gui
from vlm.train.sources import SketchPages


@pytest.fixture(scope="module")
def page_sets(tmp_path_factory) -> dict[str, Path]:
    return write_page_sets(tmp_path_factory.mktemp("sets") / "pages", pages=2)


def test_page_sets_load_back_with_every_reader(page_sets):
    samples = load_samples(page_sets["sketches"])
    assert [s.name for s in samples] == [f"{page:05d}-{style}" for page in range(2) for style in sorted(PAGE_STYLES)]
    pages = [generate_page(HELD_OUT_SEED + i) for i in range(2)]  # consecutive seeds from the held-out one
    assert all(s.tree == pages[int(s.name[:5])].tree for s in samples)

    captions = load_captions(page_sets["captions"], page_sets["images"])
    assert [c.references for c in captions] == [(describe(page),) for page in pages for _ in PAGE_STYLES]
    names = [record["sketch"] for record in json.loads(page_sets["captions"].read_text())["images"]]
    assert all(c.image_path.read_bytes() == (page_sets["sketches"] / f"{name}.png").read_bytes()
               for c, name in zip(captions, names))  # images/ID.png is the sketch sample's picture

    questions = load_vqa(page_sets["questions"], page_sets["annotations"], page_sets["images"])
    assert len(questions) == 2 * 3 * len(PAGE_STYLES)  # three questions a page, asked in every style
    assert all(len(q.answers) == 10 and len(set(q.answers)) == 1 for q in questions)
    assert [q.image_path for q in questions[::3]] == [c.image_path for c in captions]


def test_answer_and_question_types_are_vqav2s(page_sets):
    questions = load_vqa(page_sets["questions"], page_sets["annotations"], page_sets["images"])
    types = {(q.question, q.answer_type, q.question_type) for q in questions}  # the two pages' six
    assert types == {("How many text boxes are there?", "number", "how many"),
                     ("Is there a card?", "yes/no", "is there"),
                     ("What colour is the last button?", "other", "what colour"),
                     ("How many columns are there?", "number", "how many"),
                     ("Is there a radio button?", "yes/no", "is there"),
                     ("How many radio buttons are there?", "number", "how many")}
    assert all((q.answer_type == "number") == q.question.startswith("How many") for q in questions)
    assert answer_type("first") == "other" and question_type("Which navigation button is active?") == "which navigation"


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_pages(page_sets, tmp_path):
    again = write_page_sets(tmp_path / "again", pages=2)
    files = sorted(p.relative_to(page_sets["images"].parent) for p in page_sets["images"].parent.rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "again") for p in again["images"].parent.rglob("*.*"))
    assert all((page_sets["images"].parent / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    other = write_page_sets(tmp_path / "other", pages=2, seed=HELD_OUT_SEED + 1000, styles=["wireframe"])
    guis = [p.read_text() for p in sorted(other["sketches"].glob("*.gui"))]
    assert guis == [to_gui(generate_page(HELD_OUT_SEED + 1000 + i).tree) for i in range(2)]
    assert set(guis).isdisjoint(p.read_text() for p in page_sets["sketches"].glob("*.gui"))


def test_held_out_seeds_are_past_every_recipes_pages():
    held_out = range(HELD_OUT_SEED, HELD_OUT_SEED + 1_000_000)  # room for far more pages than the default 100
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        data = yaml.safe_load(recipe.read_text())["data"]
        for source in data.get("sources", []) + data.get("validation", []):
            if source["kind"] == "sketch":
                pages = SketchPages(**source.get("options", {}))  # the source's own defaults fill the gaps
                trained = range(pages.seed, pages.seed + pages.pages)
                assert trained.stop <= held_out.start or trained.start >= held_out.stop, (recipe.name, source["name"])


def test_easy_vqa_writes_a_vqav2_pair_of_its_first_questions(tmp_path):
    import easy_vqa

    paths = write_easy_vqa(tmp_path / "easy-vqa", limit=12)
    questions = load_vqa(paths["questions"], paths["annotations"], paths["images"])
    texts, answers, image_ids = easy_vqa.get_test_questions()
    assert [(q.question, q.answer, q.image_id) for q in questions] == list(zip(texts, answers, image_ids))[:12]
    assert all(q.answer_type == ("yes/no" if q.answer in ("yes", "no") else "other") for q in questions)
    assert {q.answer_type for q in questions} == {"yes/no", "other"}
    pictures = easy_vqa.get_test_image_paths()
    assert all(q.image_path.read_bytes() == Path(pictures[q.image_id]).read_bytes() for q in questions)


def test_write_sets_prints_commands_that_run_without_loading_torch_and_each_runs(tiny_model, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval sets"  # a space: the printed commands quote their paths
    script = ("import sys; from vlm.cli import main; code = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch was loaded'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "eval", "write-sets", str(out), "--pages", "1",
                           "--styles", "wireframe", "sketch", "--easy-vqa-split", "test", "--easy-vqa-limit", "4"],
                          capture_output=True, text=True, env=ONE_THREAD, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line)[1:] for line in done.stdout.splitlines() if line.startswith("vlm ")]
    assert [c[:2] for c in commands] == [["eval", "sketch2html"], ["eval", "vqa"], ["eval", "caption"], ["eval", "vqa"]]
    scores = []
    for command in commands:
        code, stdout, err = run(capsys, *command, "--model", tiny_model, *FAST, "--json")
        assert code == 0, err
        (report,) = json_lines(stdout)
        scores.append(report["results"][0]["metrics"] if "results" in report else report)  # sketch2html's are flat
    sketch2html, pages, captions, easy = scores
    assert sketch2html["samples"] == 2 and 0 <= sketch2html["element_f1"] <= 1
    assert {"accuracy", "accuracy[number]", "accuracy[yes/no]", "accuracy[other]"} == set(pages)
    assert "CIDEr-D" in captions and {"accuracy", "accuracy[yes/no]", "accuracy[other]"} == set(easy)


@pytest.fixture
def pix2code(tmp_path) -> Path:
    """A miniature of pix2code's web set: train/ with 20 NAME.gui + NAME.png pairs."""
    train = tmp_path / "pix2code-web" / "train"
    train.mkdir(parents=True)
    for i in range(20):
        (train / f"page-{i:02d}.gui").write_text(to_gui(generate_page(i, vocabulary="pix2code").tree))
        Image.new("RGB", (80, 46), "white").save(train / f"page-{i:02d}.png")
    return train.parent


def test_sketch2html_split_validation_scores_exactly_the_last_tenth(tiny_model, pix2code, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "scores.json"
    code, _, err = run(capsys, "eval", "sketch2html", "--data", pix2code, "--split", "validation",
                         "--output", output, "--model", tiny_model, *FAST, "--json")
    assert code == 0, err
    assert [s["name"] for s in json.loads(output.read_text())["samples"]] == ["page-18", "page-19"]
    samples = json.loads(output.read_text())["samples"]
    assert [s["reference"] for s in samples] == [generate_page(i, vocabulary="pix2code").dsl for i in (18, 19)]


def test_write_sets_help_states_the_writers_defaults(capsys):
    with pytest.raises(SystemExit):
        run(capsys, "eval", "write-sets", "--help")
    text = " ".join(capsys.readouterr().out.split())
    defaults = {name: p.default for name, p in inspect.signature(write_page_sets).parameters.items()}
    defaults["styles"] = " ".join(defaults["styles"])
    assert all(f"default: {defaults[name]}" in text for name in ("pages", "seed", "styles", "questions_per_page"))


def test_bad_input_is_one_line(pix2code, tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    assert f"{file} is a file" in one_line_error(capsys, "eval", "write-sets", file)
    assert "must be >= 1" in one_line_error(capsys, "eval", "write-sets", tmp_path / "a", "--pages", "0")
    assert "unknown styles ['oil']" in one_line_error(capsys, "eval", "write-sets", tmp_path / "b", "--styles", "oil")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "pages").exists()  # nothing written
    write_page_sets(tmp_path / "c" / "pages", pages=1, styles=["wireframe"])
    assert "is not empty" in one_line_error(capsys, "eval", "write-sets", tmp_path / "c")
    plain = pix2code / "train"  # a plain folder of samples, which has no train/ of its own
    assert "is not pix2code's web set: it has no train/ folder" in one_line_error(
        capsys, "eval", "sketch2html", "--data", plain, "--split", "validation")
