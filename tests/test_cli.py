"""The `vlm` command on a tiny random model: every command, its --json output, and its one-line errors.

Also home to the helpers the demo tests and benchmarks/load_test_demo.py share: `save_tiny_vlm` and
`serve_demo` (which runs `vlm demo` itself).
"""

import io
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_backbones import save_tiny_lm

from vlm.cli import RENDER_SIZE, main
from vlm.config import ModelConfig
from vlm.model import build_model
from vlm.sketch import chromium_missing, load_samples, write_generated_set

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "demos" / "examples"
CAT, SKETCH = EXAMPLES / "cat.jpg", EXAMPLES / "sketch-landing.jpg"
FAST = ["--max-new-tokens", "6", "--num-beams", "1"]
# A tiny model runs fastest on one thread, and the test machine is shared: more threads only wait on each other.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def save_tiny_vlm(directory: Path) -> Path:
    """A saved tiny model whose answers are never empty: its LM is tilted towards the words of the tiny
    vocabulary (not stray bytes or stop tokens), and its random vision tower is saved beside it, so
    `vlm.load` rebuilds the same model in any process."""
    directory = Path(directory)
    lm_dir = save_tiny_lm("llama", directory / "lm")
    torch.manual_seed(0)
    vision = directory / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(vision))
    sizes = dict(num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
                 cross_attn_heads=2, cross_attn_dim_head=8, cross_attn_ff_mult=2, cross_attn_every_n_layers=2)
    model = build_model(ModelConfig(lm=str(lm_dir), vision="timm:resnet10t", vision_weights=str(vision),
                                    image_size=(64, 96), **sizes))
    tokenizer = model.tokenizer
    with torch.no_grad():
        for block in model.cross_attn.values():  # open gates: the image changes the text
            block.attention_gate.fill_(1.0)
            block.ff_gate.fill_(1.0)
        generator = torch.Generator().manual_seed(0)
        for p in model.lm.parameters():  # 0.02 init gives flat logits that repeat one token
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        embeddings = model.lm.get_input_embeddings().weight  # tied to the output layer
        texts = [tokenizer.decode([i]) for i in range(len(embeddings))]
        words = torch.tensor([t.isascii() and t.isprintable() and len(t.strip()) > 1 and not t.startswith("<|")
                              for t in texts])
        embeddings[~words] *= 0.05
    model.lm.config.max_position_embeddings = 1024  # room for sketch2html's 512 new tokens
    model.lm.save_pretrained(lm_dir)
    return model.save_pretrained(directory / "model")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Built once per session, whichever test module asks first."""
    folder = tmp_path_factory.getbasetemp() / "tiny-vlm"
    return folder / "model" if (folder / "model" / "config.json").is_file() else save_tiny_vlm(folder)


@contextmanager
def serve_demo(model: Path, *options: str, log: Path, threads: int = 1, timeout: float = 180):
    """`vlm demo --model MODEL` in its own process on a free loopback port; yields (url, process).
    threads: torch's threads in the server (0: torch's default)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "vlm.cli", "demo", "--model", str(model), "--port", str(port), *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else os.environ
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    try:
        while "serving on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vlm demo did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --- help --------------------------------------------------------------------------------------

COMMANDS = [["caption"], ["ask"], ["sketch2html"], ["chat"], ["demo"], ["eval", "caption"], ["eval", "vqa"],
            ["eval", "sketch2html"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_and_a_model_option(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text
    assert ("--json" in text) == (command != ["demo"])  # every command that returns results


def test_top_level_help_lists_every_command_and_train_is_the_trainers(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("caption", "ask", "sketch2html", "chat", "train", "eval", "average", "demo"))
    with pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    assert exit.value.code == 0 and "--resume" in capsys.readouterr().out


# --- results -----------------------------------------------------------------------------------


def test_caption_prints_one_line_or_one_json_object_per_image(tiny_model, capsys):
    code, out, err = run(capsys, "caption", CAT, SKETCH, "--model", tiny_model, *FAST, "--json")
    assert code == 0, err
    results = json_lines(out)
    assert [r["image"] for r in results] == [str(CAT), str(SKETCH)]
    assert all(r["caption"] for r in results)
    code, out, _ = run(capsys, "caption", CAT, "--model", tiny_model, *FAST)
    assert code == 0 and out.strip() == results[0]["caption"]  # greedy: the same caption in either format


def test_ask_answers_each_question(tiny_model, capsys):
    code, out, err = run(capsys, "ask", CAT, "What is it?", "How many cats?", "--model", tiny_model, *FAST, "--json")
    assert code == 0, err
    results = json_lines(out)
    assert [r["question"] for r in results] == ["What is it?", "How many cats?"]
    assert all(r["answer"] and r["image"] == str(CAT) for r in results)


def test_sketch2html_writes_the_page_and_renders_it(tiny_model, tmp_path, capsys):
    page, png = tmp_path / "page.html", tmp_path / "page.png"
    render = [] if chromium_missing() else ["--render", png]
    code, out, err = run(capsys, "sketch2html", SKETCH, "-o", page, *render, "--model", tiny_model, *FAST, "--json")
    assert code == 0, err
    (result,) = json_lines(out)
    assert result["html"] == page.read_text() and "<html" in result["html"]
    if render:
        assert result["render"] == str(png) and Image.open(png).size == RENDER_SIZE
    code, out, _ = run(capsys, "sketch2html", SKETCH, "--model", tiny_model, *FAST)  # no -o: the page on stdout
    assert code == 0 and out.startswith("<!DOCTYPE html>")


def test_chat_keeps_the_conversation_and_reports_a_bad_image_without_ending_it(tiny_model, monkeypatch, capsys):
    lines = f"/image {CAT}\nWhat is this?\n/image {EXAMPLES / 'missing.png'}\nAnd now?\n/reset\nHello\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code, out, err = run(capsys, "chat", "--model", tiny_model, *FAST, "--json")
    assert code == 0
    replies = json_lines(out)
    assert len(replies) == 3 and all(r["role"] == "assistant" and r["content"] for r in replies)
    assert err.strip().splitlines() == [f"vlm: error: {EXAMPLES / 'missing.png'}: cannot read (No such file or directory)"]


@pytest.fixture
def coco(tmp_path) -> dict[str, Path]:
    """A miniature COCO: four images, a Karpathy split file, and VQAv2 questions and annotations."""
    images = tmp_path / "images"
    images.mkdir()
    sources = [CAT, SKETCH, EXAMPLES / "sketch-cards.jpg", CAT]
    for i, source in enumerate(sources):
        Image.open(source).rotate(90 * i).save(images / f"{i:012d}.jpg")
    karpathy = {"images": [{"filename": f"{i:012d}.jpg", "cocoid": i, "split": split,
                            "sentences": [{"raw": f"a picture number {i}"}, {"raw": "a picture"}]}
                           for i, split in enumerate(["test", "test", "train", "restval"])]}
    questions = {"questions": [{"question_id": i, "image_id": i, "question": "What is it?"} for i in range(4)]}
    annotations = {"annotations": [{"question_id": i, "image_id": i, "answer_type": "other",
                                    "answers": [{"answer": "a cat"}] * 10} for i in range(4)]}
    paths = {"images": images}
    for name, data in [("karpathy", karpathy), ("questions", questions), ("annotations", annotations)]:
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def test_eval_caption_scores_every_shot_count_with_demos_chosen_by_image_features(tiny_model, coco, capsys):
    code, out, err = run(capsys, "eval", "caption", "--data", coco["karpathy"], "--images", coco["images"],
                         "--shots", "0,1", "--demos", "rices", "--model", tiny_model, *FAST, "--json")
    assert code == 0, err
    (report,) = json_lines(out)  # the runner's table went to stderr, not into the JSON
    assert report["task"] == "captioning" and report["settings"]["examples"] == 2 and report["settings"]["support"] == 2
    assert [r["shots"] for r in report["results"]] == [0, 1]
    assert all(0 <= r["metrics"]["CIDEr-D"] for r in report["results"])


def test_eval_vqa_prints_the_table_and_writes_every_prediction(tiny_model, coco, tmp_path, capsys):
    output = tmp_path / "vqa.json"
    code, out, err = run(capsys, "eval", "vqa", "--questions", coco["questions"], "--annotations", coco["annotations"],
                         "--support-questions", coco["questions"], "--support-annotations", coco["annotations"],
                         "--images", coco["images"], "--limit", "2", "--output", output, "--model", tiny_model, *FAST)
    assert code == 0, err
    assert out.splitlines()[1].split()[:2] == ["shots", "accuracy"]
    assert len(json.loads(output.read_text())["results"][0]["items"]) == 2


def test_eval_sketch2html_scores_generated_samples(tiny_model, tmp_path, capsys):
    write_generated_set(tmp_path / "samples", 2, seed=0)
    code, out, err = run(capsys, "eval", "sketch2html", "--data", tmp_path / "samples", "--model", tiny_model,
                         *FAST, "--json")
    assert code == 0, err
    (scores,) = json_lines(out)
    elements = scores.pop("elements")
    assert scores["samples"] == 2 and all(0 <= v <= 1 for k, v in scores.items() if k != "samples")
    # every reference element is counted once, under its own token
    assert sum(e["reference"] for e in elements.values()) == sum(len(s.tree) for s in load_samples(tmp_path / "samples"))
    code, out, err = run(capsys, "eval", "sketch2html", "--data", tmp_path / "samples", "--model", tiny_model, *FAST)
    assert code == 0, err
    assert out.split("\n\n")[1].split()[:5] == ["element", "in", "refs", "written", "precision"]


# --- errors: one line on stderr, exit status 2 ---------------------------------------------------


def one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("vlm: error: ")
    return line


@pytest.mark.parametrize("command", [["caption", "{image}"], ["ask", "{image}", "what?"], ["sketch2html", "{image}"],
                                     ["chat", "--image", "{image}"]], ids=lambda c: c[0])
def test_a_missing_or_non_image_file_is_one_line_before_the_model_loads(command, tmp_path, capsys):
    # --model points nowhere: each error must come from the image, checked first
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    for image, problem in [(tmp_path / "missing.jpg", "cannot read"), (text, "not a supported image")]:
        line = one_line_error(capsys, *[a.format(image=image) for a in command], "--model", tmp_path / "nowhere")
        assert str(image) in line and problem in line


def test_model_and_usage_problems_are_one_line(tiny_model, coco, tmp_path, capsys):
    assert "has no config.json" in one_line_error(capsys, "caption", CAT, "--model", tmp_path)
    assert "must end in .png" in one_line_error(capsys, "sketch2html", SKETCH, "--render", tmp_path / "page.jpg")
    assert "no folder" in one_line_error(capsys, "sketch2html", SKETCH, "-o", tmp_path / "nowhere" / "page.html")
    assert "--support-questions" in one_line_error(
        capsys, "eval", "vqa", "--questions", coco["questions"], "--annotations", coco["annotations"],
        "--images", coco["images"], "--model", tiny_model)
    assert "no such folder" in one_line_error(capsys, "eval", "sketch2html", "--data", tmp_path / "none")


def test_a_real_process_exits_2_with_exactly_one_line(tmp_path):
    """As a shell sees it, with every library's logging and warnings in play."""
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(CAT.read_bytes()[:3000])
    done = subprocess.run([sys.executable, "-m", "vlm.cli", "caption", str(broken)], capture_output=True, text=True,
                          env=ONE_THREAD, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"vlm: error: {broken}: cannot decode, truncated or corrupt")
    done = subprocess.run([sys.executable, "-m", "vlm.cli", "train", str(tmp_path / "none.yaml")], capture_output=True,
                          text=True, env=ONE_THREAD, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


# --- the demo, served by `vlm demo` --------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The addresses a TCP socket listens on at `port`, as Linux's /proc/net/tcp{,6} write them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_demo_binds_loopback_limits_uploads_and_serves_only_uploaded_files(tiny_model, tmp_path):
    with serve_demo(tiny_model, "--max-upload-mb", "1", log=tmp_path / "demo.log") as (url, _):
        assert listening_addresses(int(url.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1 only
        api = f"{url}/gradio_api"
        big = httpx.post(f"{api}/upload", files=[("files", ("big.png", b"\0" * 1_100_000, "image/png"))], timeout=30)
        assert big.status_code == 413

        def caption(path: str) -> str:
            job = httpx.post(f"{api}/call/caption", json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, ""]})
            return httpx.get(f"{api}/call/caption/{job.json()['event_id']}", timeout=60).text

        # a request may name only files that were uploaded, never one elsewhere on the server
        events = caption("/etc/passwd")
        assert "event: error" in events and "root:" not in events
        # an uploaded file that is not an image: a message naming it, not a stack trace
        upload = httpx.post(f"{api}/upload", files=[("files", ("notes.png", b"just text", "image/png"))], timeout=30)
        events = caption(upload.json()[0])
        assert "notes.png: not a supported image" in events and "Traceback" not in events
        upload = httpx.post(f"{api}/upload", files=[("files", ("cat.jpg", CAT.read_bytes(), "image/jpeg"))], timeout=30)
        (line,) = [line for line in caption(upload.json()[0]).splitlines() if line.startswith("data:")]
        said, answers = json.loads(line.removeprefix("data:"))
        assert said and answers["data"] == []
