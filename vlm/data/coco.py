"""COCO captions (Karpathy splits or the official captions_*.json) and VQAv2, as map-style sources.

Entries with missing fields or missing image files are counted in `skipped` and logged (on_error="skip")
or raise DataError naming the file and entry ("raise"). A file that is not the expected JSON always raises.
"""

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from vlm.data import DataError, Example, RecordError, Skips, log
from vlm.prompts import caption, vqa


def _load_json(path: Path, *keys: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(key), list) for key in keys):
        raise DataError(f"{path}: expected a JSON object with list(s) {list(keys)}")
    return data


def _string(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError("bad_record", f"expected a non-empty string, got {value!r:.40}")
    return value


def _has_id(entry, key: str) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get(key), (int, str))


class _Checked:
    """A map-style source over (image path, texts) items that passed the checks; `format(*texts)` prompts."""

    format = staticmethod(caption)

    def __init__(self, on_error: str):
        self._skips = Skips(on_error)
        self.skipped = self._skips.counts
        self.items: list[tuple[Path, tuple[str, ...]]] = []
        self._exists: dict[Path, bool] = {}  # many entries share an image: stat each once

    def _add(self, where: str, build, *args) -> None:
        """Keep `build(*args)` -> (image, texts), or skip the entry and count why."""
        try:
            image, texts = build(*args)
        except KeyError as e:
            return self._skips(where, "bad_record", f"missing field {e}")
        except (TypeError, AttributeError, ValueError) as e:  # RecordError included
            return self._skips(where, getattr(e, "reason", "bad_record"), f"malformed entry ({e})")
        if image not in self._exists:
            self._exists[image] = image.is_file()
        if not self._exists[image]:
            return self._skips(where, "missing_image", f"image not found: {image}")
        self.items.append((image, texts))

    def _finish(self, name: str) -> None:
        if not self.items:
            raise DataError(f"{name}: no usable examples ({self._skips.summary()})")
        if self.skipped:
            log.warning("%s: skipped %d entries (%s)", name, self.skipped.total(), self._skips.summary())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        image, texts = self.items[index]
        return Example(self.format(*texts), [image])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class KarpathyCaptions(_Checked):
    """Karpathy's dataset_coco.json: one example per (image, caption) of the chosen splits.

    Images are `image_root / filepath / filename` ("train2014/COCO_train2014_....jpg"). The usual
    training set is split=("train", "restval"); "val" and "test" hold 5000 images each.
    """

    def __init__(
        self,
        path: str | Path,
        image_root: str | Path,
        *,
        split: str | Sequence[str] = ("train", "restval"),
        on_error: str = "skip",
    ):
        super().__init__(on_error)
        path, image_root = Path(path), Path(image_root)
        splits = (split,) if isinstance(split, str) else tuple(split)
        images = _load_json(path, "images")["images"]
        for i, image in enumerate(images):
            if not isinstance(image, dict):
                self._skips(f"{path}: images[{i}]", "bad_record", "not a JSON object")
            elif image.get("split") in splits:
                for j, sentence in enumerate(image.get("sentences") or [{}]):
                    self._add(f"{path}: images[{i}].sentences[{j}]", self._entry, image_root, image, sentence)
        if not self.items and not self.skipped:
            found = sorted({str(image.get("split")) for image in images if isinstance(image, dict)})
            raise DataError(f"{path}: no images in split {sorted(splits)}; the file has {found}")
        self._finish(str(path))

    @staticmethod
    def _entry(root: Path, image: dict, sentence: dict):
        return root / image.get("filepath", "") / image["filename"], (_string(sentence["raw"]),)


class CocoCaptions(_Checked):
    """The official captions_train2017.json (or 2014): one example per annotation, images in `image_dir`."""

    def __init__(self, path: str | Path, image_dir: str | Path, *, on_error: str = "skip"):
        super().__init__(on_error)
        path, image_dir = Path(path), Path(image_dir)
        data = _load_json(path, "images", "annotations")
        files = {image["id"]: image.get("file_name") for image in data["images"] if _has_id(image, "id")}

        def entry(annotation: dict):
            if annotation["image_id"] not in files:
                raise RecordError("bad_record", f"image_id {annotation['image_id']!r} is not in 'images'")
            return image_dir / files[annotation["image_id"]], (_string(annotation["caption"]),)

        for i, annotation in enumerate(data["annotations"]):
            self._add(f"{path}: annotations[{i}]", entry, annotation)
        self._finish(str(path))


class VQAv2(_Checked):
    """VQAv2 questions + annotations: the answer to learn is the most common of the 10 human answers.

    Images are `image_dir / COCO_{data_subtype}_{image_id:012d}.jpg`, data_subtype ("train2014") coming
    from the questions file, as in the official release. Ties go to the answer given first.
    """

    format = staticmethod(vqa)

    def __init__(
        self, questions: str | Path, annotations: str | Path, image_dir: str | Path, *, on_error: str = "skip"
    ):
        super().__init__(on_error)
        questions, annotations, image_dir = Path(questions), Path(annotations), Path(image_dir)
        question_data = _load_json(questions, "questions")
        subtype = question_data.get("data_subtype")
        if not isinstance(subtype, str):
            raise DataError(f"{questions}: no 'data_subtype' (like \"train2014\") to name the image files")
        answers = {}
        for annotation in _load_json(annotations, "annotations")["annotations"]:
            if _has_id(annotation, "question_id") and isinstance(annotation.get("answers"), list):
                answers[annotation["question_id"]] = annotation["answers"]

        def entry(question: dict):
            if question["question_id"] not in answers:
                raise RecordError("bad_record", f"question_id {question['question_id']!r} has no annotation")
            votes = Counter(_string(answer["answer"]).strip() for answer in answers[question["question_id"]])
            if not votes:
                raise RecordError("bad_record", f"question_id {question['question_id']!r} has no answers")
            image = image_dir / f"COCO_{subtype}_{int(question['image_id']):012d}.jpg"
            return image, (_string(question["question"]), votes.most_common(1)[0][0])

        for i, question in enumerate(question_data["questions"]):
            self._add(f"{questions}: questions[{i}]", entry, question)
        self._finish(str(questions))
