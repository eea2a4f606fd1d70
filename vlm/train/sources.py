"""The data sources a config names: vlm.data's readers, plus the sketch engine, pix2code and easy-VQA.

Each kind is a function or class below (KINDS): the source's `path` and `options` from the config are its
arguments (`tokenizer` and `on_error` are filled in by the trainer). `check_source` reads the signatures to reject an
unknown kind or option, or a missing file, before any weights load.
"""

import difflib
import importlib.util
import inspect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

from vlm.config import ConfigError
from vlm.data import Example, MapSource
from vlm.data.coco import CocoCaptions, KarpathyCaptions, VQAv2
from vlm.data.easy_vqa import SPLITS, balance_presence, read_easy_vqa
from vlm.data.jsonl import JsonlSource
from vlm.data.mixture import Component, Mixture
from vlm.data.webdataset import WebDatasetSource, expand_shards
from vlm.prompts import IGNORE_INDEX, caption, encode, render_chat, sketch_to_html, vqa
from vlm.sketch.dsl import to_dsl
from vlm.sketch.generate import generate_page
from vlm.sketch.pix2code import pix2code_split
from vlm.sketch.questions import describe, page_chat, page_questions
from vlm.sketch.render import STYLES, render
from vlm.train.config import SourceConfig

FILLED_IN = ("path", "tokenizer", "on_error")  # arguments that do not come from `options`
PATH_OPTIONS = ("images", "annotations")  # options that name files or folders


def jsonl(path: str, *, tokenizer, on_error: str, records: str | None = None) -> JsonlSource:
    """A JSONL manifest; `records` forces the record format (caption, vqa, sketch, chat, interleaved)."""
    return JsonlSource(path, kind=records, tokenizer=tokenizer, on_error=on_error)


def webdataset(path: str, *, tokenizer, on_error: str, records: str | None = None) -> WebDatasetSource:
    """Tar shards: a path, a glob ("shards/*.tar") or a brace range ("shard-{000..099}.tar")."""
    return WebDatasetSource(path, kind=records, tokenizer=tokenizer, on_error=on_error)


def coco(path: str, *, images: str, on_error: str) -> CocoCaptions:
    """The official captions_train2017.json; `images` is the folder of its images."""
    return CocoCaptions(path, images, on_error=on_error)


def coco_karpathy(
    path: str, *, images: str, split: str | list[str] = ("train", "restval"), on_error: str
) -> KarpathyCaptions:
    """Karpathy's dataset_coco.json; `images` holds train2014/ and val2014/."""
    return KarpathyCaptions(path, images, split=split, on_error=on_error)


def vqav2(path: str, *, annotations: str, images: str, on_error: str) -> VQAv2:
    """VQAv2: `path` is the questions file, `annotations` the answers file, `images` the COCO image folder."""
    return VQAv2(path, annotations, images, on_error=on_error)


class SketchPages:
    """`pages` generated pages (seeds seed, seed+1, ...), map-style: an epoch sees each page once.

    Drawn at `image_size` ([height, width]; default: the style's own size).

    Each page is drawn in one of `styles` and becomes one task, picked by weight from `tasks`: "html" (the
    picture to its page DSL, the sketch-to-HTML target), "question" (a question read off the page's tree),
    "caption" (a one-sentence description) or "chat" (1 to `CHAT_TURNS` of those questions and "Describe this
    page." as a conversation in the LM's chat template, the format of `vlm.load().chat` and the demo's chat).
    Everything is fixed by the page's seed.
    """

    TASKS = ("html", "question", "caption", "chat")
    CHAT_TURNS = 3

    def __init__(self, *, pages: int = 10_000, seed: int = 0, vocabulary: str = "full",
                 styles: list[str] = ("sketch", "wireframe", "pix2code"), tasks: dict | None = None,
                 image_size: list[int] | None = None, tokenizer=None):
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
            raise ConfigError(f"sketch pages must be a positive integer, got {pages!r}")
        if vocabulary not in ("full", "pix2code"):
            raise ConfigError(f"sketch vocabulary must be full or pix2code, got {vocabulary!r}")
        if not styles or any(style not in STYLES or style == "browser" for style in styles):
            raise ConfigError(
                f"sketch styles must be among {[s for s in STYLES if s != 'browser']}, got {styles!r} "
                "(browser screenshots start Chromium per page: render them to a JSONL set first)"
            )
        tasks = {"html": 1.0} if tasks is None else tasks
        if not tasks or any(task not in self.TASKS or not weight > 0 for task, weight in tasks.items()):
            raise ConfigError(f"sketch tasks must map some of {list(self.TASKS)} to weights > 0, got {tasks!r}")
        self.pages, self.seed, self.vocabulary = pages, seed, vocabulary
        self.styles, self.tasks, self.tokenizer = list(styles), tasks, tokenizer
        self.size = tuple(reversed(image_size)) if image_size else None  # config: [height, width]; PIL: (w, h)

    def __len__(self) -> int:
        return self.pages

    def __getitem__(self, index: int) -> Example:
        seed = self.seed + index
        page = generate_page(seed, vocabulary=self.vocabulary)
        rng = random.Random(f"sketch-task-{seed}")  # independent of the page's own random stream
        style = rng.choice(self.styles)
        image = render(page, style=style, seed=seed, size=self.size)
        task = rng.choices(list(self.tasks), weights=list(self.tasks.values()))[0]
        if task == "html":
            segments = sketch_to_html(page.dsl)
        elif task == "question":
            segments = vqa(*page_questions(page, rng, n=1)[0])
        elif task == "chat":
            chat = page_chat(page, rng, turns=rng.randint(1, self.CHAT_TURNS))
            segments = render_chat(chat, self.tokenizer, add_generation_prompt=False)
        else:
            segments = caption(describe(page))
        return Example(segments, [image])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class Pix2code:
    """pix2code's web set (`path`: the folder holding train/), real screenshots with their GUI DSL as the
    sketch-to-HTML target; split "train", or "validation": the last tenth of the sorted names."""

    def __init__(self, path: str, *, split: str = "train"):
        if split not in ("train", "validation"):
            raise ConfigError(f"pix2code split must be train or validation, got {split!r}")
        train, validation = pix2code_split(path)
        self.samples = train if split == "train" else validation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example:
        sample = self.samples[index]
        return Example(sketch_to_html(to_dsl(sample.tree)), [sample.image])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class EasyVQA:
    """easy-VQA (pip install easy-vqa; Victor Zhou, MIT licence): 64x64 pictures of one shape with yes/no,
    shape and colour questions; split "train" or "test".

    `balanced`: repeat the yes/no questions whose named shape or colour is in the picture until they are as
    many as those whose is not. The data asks about an absent one 4.5 times as often as about a shown one,
    so "absent" is right 82% of the time without looking; the default model answers yes/no that way
    (docs/default-model.md, run 6).
    """

    def __init__(self, *, split: str = "train", balanced: bool = False):
        if split not in SPLITS:
            raise ConfigError(f"easy_vqa split must be train or test, got {split!r}")
        if not isinstance(balanced, bool):
            raise ConfigError(f"easy_vqa balanced must be true or false, got {balanced!r}")
        self.items = [(question, answer, path) for _, question, answer, path in read_easy_vqa(split)]
        if balanced:
            self.items = balance_presence(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        question, answer, path = self.items[index]
        return Example(vqa(question, answer), [path])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


KINDS = {
    "jsonl": jsonl,
    "webdataset": webdataset,
    "coco": coco,
    "coco_karpathy": coco_karpathy,
    "vqav2": vqav2,
    "sketch": SketchPages,
    "pix2code": Pix2code,
    "easy_vqa": EasyVQA,
}


def check_source(source: SourceConfig, *, where: str):
    """Reject an unknown kind or option, a missing required option, or a file that does not exist."""
    if source.kind not in KINDS:
        hint = _nearest(source.kind, KINDS) or f"; the kinds are {', '.join(KINDS)}"
        raise ConfigError(f"{where}.kind: unknown kind {source.kind!r}{hint}")
    parameters = inspect.signature(KINDS[source.kind]).parameters
    options = [name for name in parameters if name not in FILLED_IN]
    for name in source.options:
        if name not in options:
            valid = _nearest(name, options) or f" ({source.kind} takes {options or 'no options'})"
            raise ConfigError(f"unknown option '{where}.options.{name}'{valid}")
    required = [n for n, p in parameters.items() if p.default is p.empty and n not in ("tokenizer", "on_error")]
    missing = [n for n in required if n != "path" and n not in source.options]
    if missing:
        raise ConfigError(f"{where}: a {source.kind} source needs options {missing}")
    if "path" in parameters and source.path is None:
        raise ConfigError(f"{where}: a {source.kind} source needs a path")
    if "path" not in parameters and source.path is not None:
        raise ConfigError(f"{where}: a {source.kind} source takes no path (got {source.path!r})")
    if source.path is not None:
        paths = expand_shards(source.path) if source.kind == "webdataset" else [Path(source.path)]
        for path in paths or [Path(source.path)]:
            if not path.exists():
                raise ConfigError(f"{where}.path: {path} does not exist")
    for name in PATH_OPTIONS:
        if name in source.options and not Path(source.options[name]).exists():
            raise ConfigError(f"{where}.options.{name}: {source.options[name]} does not exist")
    if source.kind == "easy_vqa" and importlib.util.find_spec("easy_vqa") is None:
        raise ConfigError(f"{where}: the easy_vqa source needs the easy-vqa package: pip install easy-vqa")


def build_source(source: SourceConfig, *, tokenizer):
    build = KINDS[source.kind]
    filled = {"path": source.path, "tokenizer": tokenizer, "on_error": source.on_error}
    parameters = inspect.signature(build).parameters
    return build(**{k: v for k, v in filled.items() if k in parameters}, **source.options)


def build_mixture(sources: list[SourceConfig], *, tokenizer, seed: int) -> Mixture:
    components = [
        Component(s.name, build_source(s, tokenizer=tokenizer), weight=s.weight, loss_weight=s.loss_weight)
        for s in sources
    ]
    return Mixture(components, seed=seed)


@dataclass(frozen=True)
class SourceShare:
    name: str
    targets: float  # mean target tokens of one of its examples
    examples: float  # its share of the examples drawn
    loss: float  # its share of the loss: a mean over target tokens, each counted loss_weight times


def source_shares(mixture: Mixture, tokenizer, *, max_length: int | None, per_source: int = 32) -> list[SourceShare]:
    """Each source's share of the examples and of the loss, from `per_source` of its examples (spread over a
    map-style source, the first of a stream). A source of one-word answers beside one of whole pages gets a
    small share of the gradient however often it is drawn: this shows how small."""
    counted = []
    for component in mixture.components:
        source = component.source
        if isinstance(source, MapSource):
            stride = max(1, len(source) // per_source)
            examples = [source[i] for i in range(0, len(source), stride)[:per_source]]
        else:
            examples = list(itertools.islice(iter(source), per_source))
        targets = [_targets(example, tokenizer, max_length) for example in examples]
        targets = [t for t in targets if t is not None]  # training skips what cannot be encoded too
        counted.append(sum(targets) / max(1, len(targets)))
    weights = [c.weight for c in mixture.components]
    losses = [c.weight * c.loss_weight * targets for c, targets in zip(mixture.components, counted)]
    return [
        SourceShare(c.name, targets, weight / sum(weights), loss / (sum(losses) or 1))
        for c, targets, weight, loss in zip(mixture.components, counted, weights, losses)
    ]


def _targets(example: Example, tokenizer, max_length: int | None) -> int | None:
    try:
        return sum(label != IGNORE_INDEX for label in encode(example.segments, tokenizer, max_length=max_length).labels)
    except ValueError:  # longer than max_length even when cut
        return None


def _nearest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
