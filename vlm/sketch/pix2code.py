"""pix2code's web set: GUI DSL + screenshot pairs, its own HTML mapping, and a fixed split.

The data stays where it is (`data_dir`, e.g. ../shared/data/pix2code-web): pairs in train/,
pix2code's mapping in web-dsl-mapping.json.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate import Sample, load_samples
from .html import Mapping

VALIDATION_SHARE = 10  # the last tenth of the sorted names


def pix2code_mapping(data_dir: str | Path) -> Mapping:
    """pix2code's own DSL -> Bootstrap HTML mapping, as its compiler uses it."""
    return Mapping.load(Path(data_dir) / "web-dsl-mapping.json")


def pix2code_names(data_dir: str | Path) -> list[str]:
    folder = Path(data_dir) / "train"
    if not folder.is_dir():
        raise ValueError(f"{data_dir} is not pix2code's web set: it has no train/ folder")
    return sorted(p.stem for p in folder.glob("*.gui") if p.with_suffix(".png").exists())


def read_pix2code(data_dir: str | Path) -> list[Sample]:
    return load_samples(Path(data_dir) / "train", names=pix2code_names(data_dir))


def pix2code_split(data_dir: str | Path) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): names sorted, the last tenth for validation."""
    samples = read_pix2code(data_dir)
    cut = len(samples) - len(samples) // VALIDATION_SHARE
    return samples[:cut], samples[cut:]
