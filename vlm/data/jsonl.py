"""JSONL manifests, one record a line, and the record formats that WebDataset shards share.

    {"image": "cat.jpg", "text": "a cat on a mat"}                                  caption
    {"image": "cat.jpg", "question": "what animal?", "answer": "cat"}               vqa
    {"image": "sketch.png", "dsl": "header { btn-active }"}                        sketch (to HTML)
    {"images": ["a.jpg"], "conversation": [{"role": "user", "content": "<image>hi"}, ...]}   chat
    {"segments": [{"text": "intro"}, {"image": "a.jpg"}, {"text": "about a"}]}    interleaved

The kind is read from the keys of each line unless forced. See docs/data.md.
"""

import json
from array import array
from collections.abc import Callable, Mapping
from pathlib import Path

from vlm.data import DataError, Example, ImageRef, RecordError, Skips, log
from vlm.prompts import IMAGE_TOKEN, caption, check_messages, interleaved, render_chat, sketch_to_html, vqa

KINDS = ("caption", "vqa", "sketch", "chat", "interleaved")
KIND_KEYS = {"conversation": "chat", "segments": "interleaved", "question": "vqa", "dsl": "sketch", "text": "caption"}

# resolve(reference) -> the image it names; reference is a record's "image" value, None where it has none
Resolver = Callable[[object], ImageRef]


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {KINDS}")


def detect_kind(record: Mapping) -> str:
    for key, kind in KIND_KEYS.items():  # most specific first: a chat record may carry a "text" too
        if key in record:
            return kind
    expected = list(KIND_KEYS)
    raise RecordError("bad_record", f"cannot tell the kind from keys {sorted(record)}: expected one of {expected}")


def example_from_record(record: object, *, resolve: Resolver, kind: str | None = None, tokenizer=None) -> Example:
    """The Example a record stands for; RecordError names what is wrong with it."""
    if not isinstance(record, Mapping):
        raise RecordError("bad_record", f"expected a JSON object, got {type(record).__name__}")
    check_kind(kind)
    kind = kind or detect_kind(record)
    if kind == "caption":
        example = Example(caption(_text(record, "text")), [resolve(record.get("image"))])
    elif kind == "vqa":
        example = Example(vqa(_text(record, "question"), _text(record, "answer")), [resolve(record.get("image"))])
    elif kind == "sketch":
        example = Example(sketch_to_html(_text(record, "dsl")), [resolve(record.get("image"))])
    elif kind == "chat":
        example = _chat(record, resolve, tokenizer)
    else:  # interleaved
        items = record.get("segments")
        if not isinstance(items, list):
            raise RecordError("bad_record", "field 'segments' must be a list")
        try:
            segments = interleaved(items)
        except ValueError as e:
            raise RecordError("bad_record", f"segments: {e}") from e
        example = Example(segments, [resolve(item["image"]) for item in items if "image" in item])
    if not any(segment.target for segment in example.segments):
        raise RecordError("bad_record", "nothing to learn: no target text (no answer, or no text after an image)")
    return example


def _text(record: Mapping, field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else repr(value)[:40]
        raise RecordError("bad_record", f"field {field!r} must be a non-empty string, got {got}")
    return value


def _chat(record: Mapping, resolve: Resolver, tokenizer) -> Example:
    conversation, references = record.get("conversation"), record.get("images", [])
    if not isinstance(conversation, list) or not isinstance(references, list):
        raise RecordError("bad_record", "field 'conversation' and field 'images' must be lists")
    try:
        check_messages(conversation)
    except ValueError as e:
        raise RecordError("bad_record", f"conversation: {e}") from e
    markers = sum(message["content"].count(IMAGE_TOKEN) for message in conversation)
    if markers == 0 and references:  # no markers: the images open the first user turn
        first_user = next((i for i, m in enumerate(conversation) if m["role"] == "user"), None)
        if first_user is None:
            raise RecordError("bad_record", "images given but the conversation has no user message to hold them")
        conversation = list(conversation)
        message = conversation[first_user]
        conversation[first_user] = {**message, "content": IMAGE_TOKEN * len(references) + message["content"]}
    elif markers != len(references):
        raise RecordError("bad_record", f"{markers} {IMAGE_TOKEN} markers but {len(references)} images")
    images = [resolve(reference) for reference in references]
    try:
        segments = render_chat(conversation, tokenizer, add_generation_prompt=False)
    except ValueError as e:
        raise RecordError("bad_record", f"conversation: {e}") from e
    return Example(segments, images)


class JsonlSource:
    """A JSONL manifest, map-style. Relative image paths resolve against the manifest's folder.

    The whole file is checked when opened: with on_error="skip", malformed lines and lines naming missing
    images are counted in `skipped` (by reason) and logged; with "raise", the first raises DataError with
    file:line. Only byte offsets are kept, and a line is parsed again when its example is asked for.
    `tokenizer` renders chat records with its chat template (None: the plain "User: ..." format).
    """

    def __init__(self, path: str | Path, *, kind: str | None = None, tokenizer=None, on_error: str = "skip"):
        check_kind(kind)
        self.path, self.kind, self.tokenizer = Path(path), kind, tokenizer
        skips = Skips(on_error)
        self.skipped = skips.counts
        self._offsets, self._line_numbers = array("q"), array("q")
        offset = 0
        with open(self.path, "rb") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        self._parse(line, check_files=True)
                        self._offsets.append(offset)
                        self._line_numbers.append(line_number)
                    except RecordError as e:
                        skips(f"{self.path}:{line_number}", e.reason, str(e))
                offset += len(line)
        if not self._offsets:
            raise DataError(f"{self.path}: no usable examples ({skips.summary()})")
        if self.skipped:
            log.warning("%s: skipped %d lines (%s)", self.path, self.skipped.total(), skips.summary())

    def _parse(self, line: bytes, *, check_files: bool) -> Example:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 as well as bad JSON
            raise RecordError("bad_json", f"not valid JSON ({e})") from e

        def resolve(reference: object) -> ImageRef:
            if not isinstance(reference, str) or not reference:
                raise RecordError("bad_record", f"an image must be a non-empty path string, got {reference!r:.40}")
            path = self.path.parent / reference
            if check_files and not path.is_file():
                raise RecordError("missing_image", f"image not found: {path}")
            return path

        return example_from_record(record, resolve=resolve, kind=self.kind, tokenizer=self.tokenizer)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> Example:
        # files are not checked again here: one deleted since opening fails in load_images, as an ImageError
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        try:
            return self._parse(line, check_files=False)
        except RecordError as e:
            raise DataError(f"{self.path}:{self._line_numbers[index]}: {e} (the manifest changed?)") from e

    def __iter__(self):
        return (self[i] for i in range(len(self)))
