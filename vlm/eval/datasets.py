"""Readers for the evaluation data the user downloads: COCO captions and VQAv2.

Captions come as Karpathy's split file (dataset_coco.json: images[] with "split" and
"sentences") or as COCO's own captions_*.json (images[] + annotations[]); `load_captions`
tells them apart. VQAv2 comes as a questions file plus an annotations file. Every record
points at an image file that exists under the images directory, checked when reading.
"""

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionExample:
    image_id: int | str
    image_path: Path
    references: tuple[str, ...]


@dataclass(frozen=True)
class VQAExample:
    question_id: int
    image_id: int
    image_path: Path
    question: str
    answers: tuple[str, ...]  # the human answers (ten in VQAv2)
    answer_type: str = ""  # "yes/no", "number" or "other"
    question_type: str = ""

    @property
    def answer(self) -> str:
        """The most frequent human answer (the first one given, on a tie): the label for a demo."""
        return Counter(self.answers).most_common(1)[0][0]


def _read_json(path: str | Path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _field(record: dict, key: str, where: str):
    if key not in record:
        raise ValueError(f"{where} has no {key!r} field")
    return record[key]


def _resolve_image(images_dir: Path, candidates: list[str], what: str) -> Path:
    for candidate in candidates:
        path = images_dir / candidate
        if path.is_file():
            return path
    raise FileNotFoundError(f"no image file for {what} under {images_dir} (tried {', '.join(candidates)})")


def load_karpathy_captions(path: str | Path, images_dir: str | Path, *,
                           split: str | Iterable[str] = "test") -> list[CaptionExample]:
    """Images of the given split(s) of a Karpathy split file, with their raw reference sentences.

    Karpathy's training set is split=("train", "restval"); "val" and "test" hold 5000 images each.
    """
    data, images_dir = _read_json(path), Path(images_dir)
    splits = {split} if isinstance(split, str) else set(split)
    examples = []
    for i, image in enumerate(_field(data, "images", str(path))):
        where = f"{path}: images[{i}]"
        if _field(image, "split", where) not in splits:
            continue
        filename = _field(image, "filename", where)
        folder = image.get("filepath")
        candidates = [f"{folder}/{filename}", filename] if folder else [filename]
        image_id = image.get("cocoid", image.get("imgid", filename))
        references = tuple(_field(s, "raw", f"{where}.sentences") for s in _field(image, "sentences", where))
        examples.append(CaptionExample(image_id, _resolve_image(images_dir, candidates, f"image {image_id}"),
                                       references))
    if not examples:
        found = sorted({image.get("split") for image in data["images"]}, key=str)
        raise ValueError(f"{path} has no images in split {sorted(splits)}; its splits are {found}")
    return examples


def load_coco_captions(path: str | Path, images_dir: str | Path) -> list[CaptionExample]:
    """Every image of a COCO captions_*.json file with the captions annotated for it."""
    data, images_dir = _read_json(path), Path(images_dir)
    captions: dict[int, list[str]] = {}
    for i, annotation in enumerate(_field(data, "annotations", str(path))):
        where = f"{path}: annotations[{i}]"
        captions.setdefault(_field(annotation, "image_id", where), []).append(_field(annotation, "caption", where))
    images = {_field(image, "id", f"{path}: images[{i}]"): image
              for i, image in enumerate(_field(data, "images", str(path)))}
    unknown = captions.keys() - images.keys()
    if unknown:
        raise ValueError(f"{path}: captions refer to images that are not listed, e.g. {sorted(unknown)[:5]}")
    uncaptioned = images.keys() - captions.keys()
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} images have no caption, e.g. {sorted(uncaptioned)[:5]}")
    examples = []
    for image_id, image in images.items():
        filename = _field(image, "file_name", f"{path}: image {image_id}")
        candidates = [filename]
        if filename.startswith("COCO_"):  # COCO_val2014_000000391895.jpg may sit in val2014/
            candidates.append(f"{filename.split('_')[1]}/{filename}")
        examples.append(CaptionExample(image_id, _resolve_image(images_dir, candidates, f"image {image_id}"),
                                       tuple(captions[image_id])))
    return examples


def load_captions(path: str | Path, images_dir: str | Path, *,
                  split: str | Iterable[str] | None = None) -> list[CaptionExample]:
    """Read a Karpathy split file (split defaults to "test") or a COCO captions file (no splits)."""
    data = _read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and "annotations" in data:
        if split is not None:
            raise ValueError(f"{path} is a COCO captions file, which has no splits; drop split={split!r}")
        return load_coco_captions(path, images_dir)
    if isinstance(images, list) and images and "sentences" in images[0]:
        return load_karpathy_captions(path, images_dir, split="test" if split is None else split)
    raise ValueError(f"{path} is neither a Karpathy split file (images[] with 'sentences') "
                     f"nor a COCO captions file (images[] and annotations[])")


def load_vqa(questions_path: str | Path, annotations_path: str | Path,
             images_dir: str | Path) -> list[VQAExample]:
    """VQAv2 questions joined with their annotations (human answers, answer and question types)."""
    questions, annotations = _read_json(questions_path), _read_json(annotations_path)
    images_dir = Path(images_dir)
    by_question = {_field(a, "question_id", f"{annotations_path}: annotations[{i}]"): a
                   for i, a in enumerate(_field(annotations, "annotations", str(annotations_path)))}
    subtype = questions.get("data_subtype")  # e.g. "val2014", which names the image files
    image_paths: dict[int, Path] = {}
    examples = []
    for i, question in enumerate(_field(questions, "questions", str(questions_path))):
        where = f"{questions_path}: questions[{i}]"
        question_id, image_id = _field(question, "question_id", where), _field(question, "image_id", where)
        if question_id not in by_question:
            raise ValueError(f"question {question_id} has no annotation in {annotations_path}")
        annotation = by_question[question_id]
        if image_id not in image_paths:
            candidates = [f"COCO_{subtype}_{image_id:012d}.jpg", f"{subtype}/COCO_{subtype}_{image_id:012d}.jpg"]
            candidates = (candidates if subtype else []) + [f"{image_id:012d}.jpg", f"{image_id:012d}.png"]
            image_paths[image_id] = _resolve_image(images_dir, candidates, f"image {image_id}")
        answers = tuple(_field(a, "answer", f"annotation of question {question_id}")
                        for a in _field(annotation, "answers", f"annotation of question {question_id}"))
        examples.append(VQAExample(question_id, image_id, image_paths[image_id],
                                   _field(question, "question", where), answers,
                                   annotation.get("answer_type", ""), annotation.get("question_type", "")))
    return examples
