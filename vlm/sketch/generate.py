"""Random but realistic pages: the data engine's source of page trees.

Two vocabularies: "pix2code" draws pages as pix2code's web set has them (a header of 2-5
navigation buttons, one active, then 1-3 rows of 1, 2 or 4 columns, each a title, a text and
a green/orange/red button); "full" draws from the whole page DSL: navigation bars, headers,
rows of 1-4 columns holding text, images, cards, forms and buttons, and footers.
The probabilities below are tables, tuned by eye against real pages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .dsl import ROOT, Node, to_dsl
from .html import compile_html, fill_texts

BUTTONS = ("btn-green", "btn-orange", "btn-red", "btn-blue", "btn-grey")
PIX2CODE_BUTTONS = ("btn-green", "btn-orange", "btn-red")
PIX2CODE_ROWS = {1: 82, 2: 90, 3: 528}  # rows per page in pix2code's 700 training pages
TOP_BARS = {"nav": 45, "header": 35, None: 20}
ROWS = {1: 25, 2: 40, 3: 35}
COLUMNS = {"single": 25, "double": 30, "triple": 25, "quadruple": 20}
BLOCKS = {"content": 35, "card": 20, "form": 15, "media": 15, "pix2code": 15}
FIELDS = {"input": 40, "select": 15, "textarea": 15, "checkbox": 15, "radio": 15}
SAME_BLOCK_IN_ROW = 0.5  # grids of like cards are common
FOOTER = 0.5


@dataclass
class Page:
    """A page: its tree (the DSL), the texts it shows and its HTML, all fixed by a seed."""
    seed: int
    tree: Node
    texts: list[str]
    html: str
    letters: bool = False  # pix2code-like random letters instead of lorem words

    @property
    def dsl(self) -> str:
        return to_dsl(self.tree)


def make_page(tree: Node, *, seed: int = 0, letters: bool = False) -> Page:
    """A Page for a given tree (say, a pix2code .gui file), its texts drawn from `seed`."""
    texts = fill_texts(tree, random.Random(seed), letters=letters)
    return Page(seed, tree, texts, compile_html(tree, texts=texts), letters)


def generate_page(seed: int, *, vocabulary: str = "full") -> Page:
    if vocabulary not in ("full", "pix2code"):
        raise ValueError(f"vocabulary must be 'full' or 'pix2code', not {vocabulary!r}")
    rng = random.Random(seed)
    if vocabulary == "pix2code":
        return make_page(_pix2code_page(rng), seed=seed, letters=True)
    return make_page(_full_page(rng), seed=seed)


def _pick(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _leaves(*tokens: str) -> list[Node]:
    return [Node(t) for t in tokens]


def _pills(rng: random.Random, active: bool) -> Node:
    pills = ["btn-inactive"] * rng.randint(2, 5)
    if active:
        pills[rng.randrange(len(pills))] = "btn-active"
    return Node("header", tuple(_leaves(*pills)))


def _pix2code_page(rng: random.Random) -> Node:
    rows = []
    for _ in range(_pick(rng, PIX2CODE_ROWS)):
        column, count = rng.choice((("single", 1), ("double", 2), ("quadruple", 4)))
        rows.append(Node("row", tuple(
            Node(column, tuple(_leaves("small-title", "text", rng.choice(PIX2CODE_BUTTONS))))
            for _ in range(count))))
    return Node(ROOT, (_pills(rng, active=True), *rows))


def _full_page(rng: random.Random) -> Node:
    parts = []
    top = _pick(rng, TOP_BARS)
    if top == "header":
        parts.append(_pills(rng, active=rng.random() < 0.9))
    elif top == "nav":
        items = (["logo"] if rng.random() < 0.8 else []) + ["link"] * rng.randint(2, 5)
        if rng.random() < 0.3:
            items.append(rng.choice(BUTTONS))
        parts.append(Node("nav", tuple(_leaves(*items))))
    for _ in range(_pick(rng, ROWS)):
        column = _pick(rng, COLUMNS)
        count = {"single": 1, "double": 2, "triple": 3, "quadruple": 4}[column]
        shared = _pick(rng, BLOCKS) if rng.random() < SAME_BLOCK_IN_ROW else None
        parts.append(Node("row", tuple(
            Node(column, tuple(_block(rng, shared or _pick(rng, BLOCKS)))) for _ in range(count))))
    if rng.random() < FOOTER:
        items = (["text"] if rng.random() < 0.8 else []) + ["link"] * rng.randint(0, 3)
        parts.append(Node("footer", tuple(_leaves(*(items or ["text"])))))
    return Node(ROOT, tuple(parts))


def _actions(rng: random.Random, most: int) -> list[str]:
    """A run of buttons or of links."""
    if rng.random() < 0.75:
        return [rng.choice(BUTTONS) for _ in range(rng.randint(1, most))]
    return ["link"] * rng.randint(1, most)


def _block(rng: random.Random, kind: str) -> list[Node]:
    """The content of one column."""
    if kind == "pix2code":
        return _leaves("small-title", "text", rng.choice(BUTTONS))
    if kind == "media":
        return _leaves("image", *(["small-title"] if rng.random() < 0.6 else []), "text")
    if kind == "card":
        inside = (["image"] if rng.random() < 0.7 else []) + [rng.choice(("small-title", "big-title"))]
        inside += ["text"] * rng.randint(0, 2) + (_actions(rng, 2) if rng.random() < 0.7 else [])
        return [Node("card", tuple(_leaves(*inside)))]
    if kind == "form":
        fields: list[str] = []
        for _ in range(rng.randint(1, 4)):
            field = _pick(rng, FIELDS)
            if field in ("checkbox", "radio"):
                fields += [field] * rng.randint(2 if field == "radio" else 1, 3)
            else:
                fields += ["label", field] if rng.random() < 0.85 else [field]
        title = [rng.choice(("small-title", "big-title"))] if rng.random() < 0.5 else []
        return [*_leaves(*title), Node("form", tuple(_leaves(*fields, rng.choice(BUTTONS))))]
    # "content": a heading and/or paragraphs, often with actions
    tokens = [rng.choice(("small-title", "big-title"))] if rng.random() < 0.7 else []
    tokens += ["text"] * rng.randint(0 if tokens else 1, 2)
    if rng.random() < 0.6:
        tokens += _actions(rng, 3)
    return _leaves(*tokens)
