"""WebDataset tar shards, streamed with the standard library: no `webdataset` package.

A sample is the run of consecutive members sharing a key (the member path up to the first dot of its
file name): KEY.json holds a record in the JSONL formats (vlm.data.jsonl) and KEY.jpg / .png / .webp
its image. Where a record names images ("image": "jpg", "images": ["0.jpg", "1.png"]), a name is the
member's extension; a one-image record may leave "image" out. Images stay encoded bytes until loaded.
"""

import glob
import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from vlm.data import DataError, Example, ImageRef, RecordError, Skips
from vlm.data.jsonl import check_kind, example_from_record

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)  # what a cut-short or corrupt shard raises


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a list, a glob ("data/*.tar") or a brace range ("data/shard-{000..099}.tar")."""
    if not isinstance(shards, (str, Path)):
        return [Path(shard) for shard in shards]
    pattern = str(shards)
    brace = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if brace:
        first, last = brace.group(1), brace.group(2)
        numbers = (str(n).zfill(len(first)) for n in range(int(first), int(last) + 1))
        return [p for n in numbers for p in expand_shards(pattern[: brace.start()] + n + pattern[brace.end() :])]
    return [Path(p) for p in sorted(glob.glob(pattern))] if glob.has_magic(pattern) else [Path(pattern)]


class WebDatasetSource:
    """Tar shards read in order, a streaming source. Every pass reads every shard again.

    With on_error="skip", bad samples, unreadable shards and shards cut short are counted in `skipped` and
    logged (a cut-short shard gives the samples before the cut); with "raise", the first raises DataError.
    """

    def __init__(self, shards, *, kind: str | None = None, tokenizer=None, on_error: str = "skip"):
        check_kind(kind)
        self.shards = expand_shards(shards)
        if not self.shards:
            raise DataError(f"no shards match {shards!r}")
        self.kind, self.tokenizer = kind, tokenizer
        self._skips = Skips(on_error)
        self.skipped = self._skips.counts

    def __iter__(self) -> Iterator[Example]:
        yielded = 0
        for shard in self.shards:
            for example in self._read(shard):
                yielded += 1
                yield example
        if not yielded:
            raise DataError(f"no usable examples in {len(self.shards)} shards ({self._skips.summary()})")

    def _read(self, shard: Path) -> Iterator[Example]:
        try:
            tar = tarfile.open(shard, mode="r|*")  # stream mode: no seeking, one pass
        except READ_ERRORS as e:
            self._skips(str(shard), "unreadable_shard", f"cannot open shard ({e})")
            return
        samples = 0
        with tar:
            members = _members(tar)
            while True:
                try:
                    key, files = next(members)
                except StopIteration:
                    return
                except READ_ERRORS as e:  # the sample being read is dropped: it may be missing members
                    self._skips(str(shard), "truncated_shard", f"shard cut short after {samples} samples ({e})")
                    return
                samples += 1
                try:
                    yield self._example(key, files)
                except RecordError as e:
                    self._skips(f"{shard}:{key}", e.reason, str(e))

    def _example(self, key: str, files: dict[str, bytes]) -> Example:
        if "json" not in files:
            raise RecordError("bad_record", f"no {key}.json in the sample")
        try:
            record = json.loads(files["json"])
        except (ValueError, RecursionError) as e:
            raise RecordError("bad_json", f"{key}.json is not valid JSON ({e})") from e
        images = [name for name in files if name.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]

        def resolve(reference: object) -> ImageRef:
            if reference is None and len(images) == 1:
                return files[images[0]]
            if reference is None or reference not in images:
                raise RecordError("missing_image", f"no image {reference!r} among the sample's images {images}")
            return files[reference]

        return example_from_record(record, resolve=resolve, kind=self.kind, tokenizer=self.tokenizer)


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, from consecutive members with the same key."""
    key, files = None, {}
    for member in tar:
        directory, name = posixpath.split(member.name)
        stem, dot, extension = name.partition(".")
        if not member.isfile() or not dot:
            continue
        member_key = posixpath.join(directory, stem)
        if member_key != key:
            if files:
                yield key, files
            key, files = member_key, {}
        extension = extension.lower()
        if extension == "json" or extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            files[extension] = tar.extractfile(member).read()
    if files:
        yield key, files
