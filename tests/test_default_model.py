"""The shipped default model (vlm/weights/default) on pictures it never saw: it must read them, not guess.

Thresholds sit below what the shipped weights measured here and well above what a model that ignores the
picture manages (run 1 of the recipe, which wrote plausible pages from the grammar alone, got no page's
layout right and 32% of easy-VQA's shape and colour questions; docs/default-model.md).
"""

import random
import re

import pytest

import vlm
from vlm.data.easy_vqa import read_easy_vqa
from vlm.eval.generated import HELD_OUT_SEED, PAGE_STYLES, answer_type
from vlm.eval.vqa_metrics import normalize_answer
from vlm.sketch import evaluate_sketch2html, generate_page, load_samples, page_questions, render
from vlm.sketch.evaluate import write_generated_set


@pytest.fixture(scope="module")
def model():
    return vlm.load(dtype="bfloat16")


def layout(dsl: str) -> tuple[int, list[int]]:
    """(buttons in the header, columns of each row) of a pix2code page."""
    rows = dsl.split("row {")[1:]
    return dsl.split("}")[0].count("btn"), [len(re.findall(r"(?:single|double|quadruple) \{", row)) for row in rows]


@pytest.mark.slow
def test_the_default_model_lays_out_the_pages_it_is_shown(model, tmp_path):
    # held-out pages of pix2code's vocabulary in its style and as wireframes: 7 of 12 layouts right when measured
    # (run 17)
    write_generated_set(tmp_path, 6, seed=HELD_OUT_SEED + 5_000, styles=("pix2code", "wireframe"), vocabulary="pix2code")
    samples = evaluate_sketch2html(model.sketch_to_html, load_samples(tmp_path), batch_size=12)["samples"]
    right = [layout(s["prediction"]) == layout(s["reference"]) for s in samples]
    assert sum(right) >= 4, [(s["prediction"], s["reference"]) for s in samples]


@pytest.mark.slow
def test_one_sketch_alone_jumps_forward_to_the_page_it_gets_in_a_batch(tmp_path, monkeypatch):
    # alone, the tokens a DSL word's start decides ride along in one forward pass; a batch picks each in a pass.
    # float32: in bf16 a batch of two and a single picture round differently, and the shipped weights sit near a
    # tie on one of these pages' button colours (orange or green), which bf16 can tip either way.
    model = vlm.load()
    write_generated_set(tmp_path, 2, seed=HELD_OUT_SEED + 6_000, styles=("pix2code",), vocabulary="pix2code")
    passes = []
    forward = type(model.model).forward
    monkeypatch.setattr(type(model.model), "forward", lambda self, *a, **k: passes.append(1) or forward(self, *a, **k))
    for image in sorted(str(path) for path in tmp_path.glob("*.png")):
        passes.clear()
        twice = model.sketch_to_html([image, image])
        a_pass_a_token = len(passes)
        passes.clear()
        assert model.sketch_to_html(image) == twice[0] == twice[1]
        assert len(passes) <= 0.8 * a_pass_a_token, (len(passes), a_pass_a_token)


@pytest.mark.slow
def test_the_default_model_names_the_shape_and_colour_it_is_shown(model):
    # easy-VQA's test split, its shape and colour questions (13 answers): 48 of these 48 right when measured
    # (run 17; run 15 45); a model blind to the picture gets about a third, fresh adapters none (they do not answer in words)
    questions = [q for q in read_easy_vqa("test") if answer_type(q[2]) == "other"][:48]
    answers = model.ask([path for *_, path in questions], [question for _, question, _, _ in questions])
    accuracy = sum(normalize_answer(a) == answer for a, (_, _, answer, _) in zip(answers, questions)) / len(questions)
    assert accuracy >= 0.75, list(zip(answers, [answer for _, _, answer, _ in questions]))


@pytest.mark.slow
def test_the_default_model_answers_page_questions_in_chat(model):
    # held-out pages, one question each, in the chat template (the demo's Chat tab): 23 of these 24 right when
    # measured (run 17; on probe_chat's 120 such questions it gets 81, run 16 79); run 7, never trained in
    # that format, got 3 of them and wrote page DSL and captions instead
    items = []
    for seed in range(HELD_OUT_SEED + 7_000, HELD_OUT_SEED + 7_008):
        page = generate_page(seed)
        question, answer = page_questions(page, random.Random(seed), n=1)[0]
        items += [(render(page, style=style, seed=seed), question, answer) for style in PAGE_STYLES]
    said = [model.chat([{"role": "user", "content": f"<image>{q}", "images": [p]}], max_new_tokens=24)
            for p, q, _ in items]
    right = sum(normalize_answer(s) == normalize_answer(a) for s, (_, _, a) in zip(said, items))
    assert not [s for s in said if "{" in s or len(s.split()) > 12], said  # short answers, no page DSL
    assert right >= 12, list(zip(said, [a for *_, a in items]))
