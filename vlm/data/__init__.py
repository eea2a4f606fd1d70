"""Training data sources. Each yields Examples: a prompt as Segments plus the images its markers stand for.

A source is anything iterable over Examples. Map-style sources (JSONL manifests, COCO) also have __len__
and __getitem__, so a Mixture can shuffle them per epoch; streaming sources (WebDataset shards) are read
in order. Resuming is the Mixture's job: it records how far it has read into each source.
"""

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image

from vlm.images import load_image
from vlm.prompts import Segment

log = logging.getLogger("vlm.data")

# A file, the encoded bytes of one (a tar member), or a decoded image; decoded only by load_images.
ImageRef = str | os.PathLike | bytes | Image.Image


@dataclass
class Example:
    segments: list[Segment]
    images: list[ImageRef]  # one per image segment, in order
    source: str = ""  # the Mixture component it came from
    loss_weight: float = 1.0  # multiplies its loss, set by the Mixture

    def __post_init__(self):
        markers = sum(segment.is_image for segment in self.segments)
        if markers != len(self.images):
            raise ValueError(f"{markers} image segments but {len(self.images)} images")

    def load_images(self, *, max_pixels: int = 64_000_000) -> list[Image.Image]:
        """The images as RGB; raises vlm.images.ImageError for one that cannot be loaded."""
        return [load_image(image, max_pixels=max_pixels) for image in self.images]


class Source(Protocol):
    def __iter__(self) -> Iterator[Example]: ...


@runtime_checkable
class MapSource(Source, Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


class DataError(ValueError):
    """Bad training data; the message names the file and the line, entry or shard."""


class RecordError(ValueError):
    """One bad record; `reason` is the key it is counted under when skipped."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Skips:
    """Bad entries are counted by reason and logged (on_error="skip"), or the first raises DataError ("raise")."""

    LOGGED = 10  # entries logged one by one; past that, only the counts

    def __init__(self, on_error: str):
        if on_error not in ("skip", "raise"):
            raise ValueError(f'on_error must be "skip" or "raise", not {on_error!r}')
        self.on_error = on_error
        self.counts = Counter()

    def __call__(self, where: str, reason: str, problem: str) -> None:
        if self.on_error == "raise":
            raise DataError(f"{where}: {problem}")
        self.counts[reason] += 1
        if self.counts.total() <= self.LOGGED:
            log.warning("skipped %s: %s", where, problem)

    def summary(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items())) or "none skipped"
