"""Held-out evaluation sets in the formats `vlm eval` reads: generated pages and easy-VQA.

    write_page_sets("eval-sets/pages", pages=100)      # sketches/, images/, captions.json, questions.json, ...
    write_easy_vqa("eval-sets/easy-vqa", split="test")  # images/, questions.json, annotations.json

Page seeds run from HELD_OUT_SEED up. The training recipes (configs/*.yaml) draw their pages from seeds
0, 1_000_000, 10_000_000, 20_000_000 and 30_000_000 up, at most 50_000 pages each, so no page evaluated here was
seen in training. Captions and questions are read off each page's tree, as in training
(vlm.sketch.questions), and asked about the page in every style it is drawn in.
"""

import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from vlm.data.easy_vqa import read_easy_vqa
from vlm.sketch import describe, generate_page, page_questions, write_generated_set

HELD_OUT_SEED = 90_000_000
PAGE_STYLES = ("sketch", "wireframe", "pix2code")  # those training draws; "browser" also works, with Chromium
HUMAN_ANSWERS = 10  # VQAv2's answers per question; here ten copies of the one true answer


def write_page_sets(out_dir: str | Path, *, pages: int = 100, seed: int = HELD_OUT_SEED,
                    styles: Sequence[str] = PAGE_STYLES, questions_per_page: int = 3) -> dict[str, Path]:
    """Write the pages of seeds seed .. seed + pages - 1, each drawn in every style, as three sets:

        sketches/NAME.png + .gui + .html    sketch to HTML (`vlm eval sketch2html --data`)
        images/ID.png                       the same pictures (hard links) named by image id, for:
        captions.json                       COCO captions, describe(page) the one reference
        questions.json, annotations.json    VQAv2, `questions_per_page` questions a page

    `out_dir` must be new or empty. The same arguments write the same bytes. Returns the paths by those names.
    """
    if pages < 1 or questions_per_page < 1:
        raise ValueError(f"pages and questions per page must be >= 1, got {pages} and {questions_per_page}")
    out = _unused_folder(out_dir)
    drawn = iter(write_generated_set(out / "sketches", pages, seed, styles))  # page by page, style by style
    (out / "images").mkdir()
    images, captions, questions = [], [], []
    for page_seed in range(seed, seed + pages):
        page = generate_page(page_seed)  # again, as write_generated_set drew it: cheap next to drawing it
        asked = page_questions(page, random.Random(f"eval-questions-{page_seed}"), n=questions_per_page)
        for style in styles:
            image_id, picture = len(images), next(drawn)
            _link(picture, out / "images" / f"{image_id:012d}.png")
            images.append({"id": image_id, "file_name": f"{image_id:012d}.png", "sketch": picture.stem,
                           "seed": page_seed, "style": style})
            captions.append({"id": image_id, "image_id": image_id, "caption": describe(page)})
            questions += [(image_id, question, answer) for question, answer in asked]
    paths = {"sketches": out / "sketches", "images": out / "images", "captions": out / "captions.json"}
    paths["captions"].write_text(json.dumps({"images": images, "annotations": captions}))
    return paths | _write_vqa(out, questions)


def write_easy_vqa(out_dir: str | Path, *, split: str = "test", limit: int | None = None) -> dict[str, Path]:
    """easy-VQA's split (the easy-vqa package), its first `limit` questions, as a VQAv2 questions and
    annotations pair, with their pictures linked in as images/ID.png. Returns the paths by name."""
    if limit is not None and limit < 1:
        raise ValueError(f"the easy-VQA limit must be >= 1, got {limit}")
    items = read_easy_vqa(split)[:limit]  # (image id, question, answer, picture)
    out = _unused_folder(out_dir)
    (out / "images").mkdir(parents=True)
    for image_id, picture in sorted({(image_id, picture) for image_id, _, _, picture in items}):
        _link(picture, out / "images" / f"{image_id:012d}.png")
    return {"images": out / "images"} | _write_vqa(out, [item[:3] for item in items])


def answer_type(answer: str) -> str:
    """VQAv2's answer types: the counting questions ("How many ...?") are the ones answered with a number."""
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def question_type(question: str) -> str:
    """The question's opening words, as VQAv2 groups questions: "how many", "is there", "what colour", ..."""
    return " ".join(question.lower().rstrip("?").split()[:2])


def _write_vqa(out: Path, questions: list[tuple[int, str, str]]) -> dict[str, Path]:
    """questions.json and annotations.json for (image id, question, answer) triples, numbered in order."""
    records = [{"question_id": i, "image_id": image_id, "question": question}
               for i, (image_id, question, _) in enumerate(questions)]
    annotations = [{"question_id": i, "image_id": image_id, "question_type": question_type(question),
                    "answer_type": answer_type(answer), "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                for k in range(HUMAN_ANSWERS)]}
                   for i, (image_id, question, answer) in enumerate(questions)]
    paths = {"questions": out / "questions.json", "annotations": out / "annotations.json"}
    paths["questions"].write_text(json.dumps({"questions": records}))
    paths["annotations"].write_text(json.dumps({"annotations": annotations}))
    return paths


def _unused_folder(path: str | Path) -> Path:
    """`path`, if it is new or an empty folder: files left from another run would silently join the set."""
    path = Path(path)
    if file := next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None):
        raise ValueError(f"{file} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{path} is not empty: write the sets to a new folder")
    return path


def _link(source: str | Path, target: Path):
    """A hard link, so each picture is stored once; a copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
