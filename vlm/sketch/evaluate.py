"""Sketch-to-HTML evaluation: samples on disk, a model's predictions, per-sample and mean scores.

The CLI's `vlm eval sketch2html --data DIR --model M` is `evaluate_sketch2html(model's predict,
load_samples(DIR))`. A sample folder holds NAME.png with NAME.gui (page DSL, as pix2code) or
NAME.html; write_generated_set makes such a folder from the data engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .browser import Chromium, chromium_missing
from .dsl import Node, parse_dsl, to_dsl, to_gui
from .generate import generate_page
from .html import PAGE_MAPPING, Mapping, compile_html, html_to_tree
from .metrics import aggregate, element_table, score_trees, visual_scores
from .render import STYLES, render


@dataclass
class Sample:
    name: str
    image: Path | Image.Image
    tree: Node  # the reference page
    html: str  # the reference HTML, for the visual score

    def load_image(self) -> Image.Image:
        return self.image if isinstance(self.image, Image.Image) else Image.open(self.image).convert("RGB")


def load_samples(data_dir: str | Path, *, names: Sequence[str] | None = None) -> list[Sample]:
    """Pairs NAME.png + NAME.gui (preferred: the tree is exact) or NAME.png + NAME.html, sorted by name.

    A .gui sample's reference HTML is compiled with page-dsl-mapping.json (texts from seed 0).
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder}")
    names = sorted(p.stem for p in folder.glob("*.png")) if names is None else list(names)
    if not names:
        raise ValueError(f"{folder} holds no NAME.png (pix2code's pairs are in its train/ folder)")
    samples = []
    for name in names:
        gui, html = folder / f"{name}.gui", folder / f"{name}.html"
        if gui.exists():
            try:
                tree = parse_dsl(gui.read_text())
            except ValueError as error:
                raise ValueError(f"{gui}: {error}") from None
            samples.append(Sample(name, folder / f"{name}.png", tree, compile_html(tree)))
        elif html.exists():
            text = html.read_text()
            samples.append(Sample(name, folder / f"{name}.png", html_to_tree(text), text))
        else:
            raise ValueError(f"{folder / name}.png has no {name}.gui or {name}.html beside it")
    return samples


def evaluate_sketch2html(predict: Callable[[list[Image.Image]], list[str]], samples: Sequence[Sample], *,
                         batch_size: int = 8, visual: bool = False,
                         mappings: Sequence[Mapping] = (PAGE_MAPPING,)) -> dict:
    """Score a model's HTML for each sample's picture.

    `predict` takes a batch of images and returns one HTML string each. Predictions are read
    back to page trees with `mappings` (add pix2code's to read Bootstrap output); `visual`
    adds the rendered-block scores and needs Chromium. Returns {"aggregate": means, "samples": [...],
    "elements": element_table's counts and scores per element token}.
    """
    if visual and chromium_missing():
        raise RuntimeError(f"visual scores need headless Chromium: {chromium_missing()}")
    results, trees = [], []
    with Chromium() if visual else nullcontext() as browser:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            outputs = predict([s.load_image() for s in batch])
            if len(outputs) != len(batch):
                raise ValueError(f"predict returned {len(outputs)} outputs for {len(batch)} images")
            for sample, output in zip(batch, outputs):
                html = output if isinstance(output, str) else ""
                tree = html_to_tree(html, mapping=list(mappings))
                trees.append((tree, sample.tree))
                scores = {"name": sample.name, **score_trees(tree, sample.tree),
                          "prediction": to_dsl(tree), "reference": to_dsl(sample.tree)}
                if visual:
                    scores.update(visual_scores(browser, html, sample.html))
                results.append(scores)
    return {"aggregate": {"samples": len(results), **aggregate(results)}, "samples": results,
            "elements": element_table(trees)}


def write_generated_set(out_dir: str | Path, n: int, seed: int, styles: Sequence[str] = ("sketch",), *,
                        vocabulary: str = "full") -> list[Path]:
    """Write the generated pages of seeds seed, seed + 1, ..., seed + n - 1, each drawn in every style,
    as NAME.png + NAME.gui + NAME.html.

    Consecutive seeds make a held-out range easy to keep apart from the ranges training draws from.
    Names are PAGE-STYLE (00012-sketch: page seed + 12); the same seed writes the same files.
    Returns the PNG paths, page by page, each page's styles in the order given.
    """
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown styles {unknown}; choose from {STYLES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with Chromium() if "browser" in styles else nullcontext() as browser:
        for i in range(n):
            page = generate_page(seed + i, vocabulary=vocabulary)
            for style in styles:
                name = f"{i:05d}-{style}"
                render(page, style=style, browser=browser).save(out / f"{name}.png")
                (out / f"{name}.gui").write_text(to_gui(page.tree))
                (out / f"{name}.html").write_text(page.html)
                written.append(out / f"{name}.png")
    return written
