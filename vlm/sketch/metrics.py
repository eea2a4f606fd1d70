"""How close a predicted page is to the reference: on page trees, and (with Chromium) on pixels.

Tree metrics, each in [0, 1] (definitions in README.md, "Sketch to HTML"):
- dsl_exact: the canonical DSL strings are equal.
- exact_but_colour: the same, with every button's colour (btn-green, btn-red, ...) read as one "button".
- structure_match: the same layout: same containers nested the same way with the same number
  of elements in each, whatever the elements are.
- element_precision / element_recall / element_f1: over the multisets of element tokens.
  element_table breaks them down by token over a whole set: which elements a model misses or makes up.
- tree_similarity: 1 - ZhangShasha(pred, ref) / max(|pred|, |ref|), unit costs, clipped at 0.
- token_accuracy: canonical DSL tokens equal position by position, over the reference's length.

Visual metrics, in the manner of Design2Code: both HTMLs are rendered, their blocks (rendered
elements that show text, a control, a picture or a painted box) matched greedily by position,
then block_match (the matched share of all block area), position (1 - the larger normalised
centre offset, matched blocks) and colour (1 - CIE76 colour difference / 100, matched blocks);
visual is their mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .browser import Block, Chromium
from .dsl import TOKENS, Node, dsl_tokens, is_container, to_dsl

TREE_METRICS = ("dsl_exact", "exact_but_colour", "structure_match", "element_precision", "element_recall", "element_f1",
                "tree_similarity", "token_accuracy")
VISUAL_METRICS = ("block_match", "position", "colour", "visual")
MATCH_LIMIT = 0.25  # blocks further apart than this (summed normalised offsets) are not a match


def _skeleton(node: Node):
    return (node.token if is_container(node.token) else "*", tuple(_skeleton(c) for c in node.children))


def _colourless(node: Node):
    token = "button" if TOKENS.get(node.token, {}).get("name") == "button" else node.token
    return token, tuple(_colourless(c) for c in node.children)


def _elements(tree: Node) -> Counter:
    """The multiset of a page's element tokens, the root not counted."""
    return Counter(n.token for n in tree.walk() if n is not tree)


def element_scores(pred: Node, ref: Node) -> tuple[float, float, float]:
    """Precision, recall and F1 of the element tokens, as multisets (the root not counted)."""
    p, r = _elements(pred), _elements(ref)
    if not p and not r:
        return 1.0, 1.0, 1.0
    hits = sum((p & r).values())
    precision = hits / sum(p.values()) if p else 0.0
    recall = hits / sum(r.values()) if r else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def element_table(pairs: Iterable[tuple[Node, Node]]) -> dict[str, dict[str, float]]:
    """Per element token over (prediction, reference) pairs: `reference` (how many the references hold),
    `predicted` (how many the predictions write), `matched` (how many of those the same page's reference holds:
    the overlap element_scores counts) and the token's `precision` and `recall`; most common in the references first.
    """
    reference, predicted, matched = Counter(), Counter(), Counter()
    for pred, ref in pairs:
        p, r = _elements(pred), _elements(ref)
        predicted.update(p)
        reference.update(r)
        matched.update(p & r)
    tokens = sorted(reference.keys() | predicted.keys(), key=lambda t: (-reference[t], -predicted[t], t))
    return {t: {"reference": reference[t], "predicted": predicted[t], "matched": matched[t],
                "precision": matched[t] / predicted[t] if predicted[t] else 0.0,
                "recall": matched[t] / reference[t] if reference[t] else 0.0} for t in tokens}


def _postorder(root: Node) -> tuple[list[str], list[int], list[int]]:
    """Labels in post-order, the index of each node's leftmost leaf, and the keyroots."""
    labels: list[str] = []
    leftmost: list[int] = []

    def visit(node: Node) -> int:
        first = None
        for child in node.children:
            leaf = visit(child)
            first = leaf if first is None else first
        labels.append(node.token)
        leftmost.append(len(labels) - 1 if first is None else first)
        return leftmost[-1]

    visit(root)
    keyroots = sorted({leaf: i for i, leaf in enumerate(leftmost)}.values())  # highest node per leftmost leaf
    return labels, leftmost, keyroots


def tree_edit_distance(a: Node, b: Node) -> int:
    """Zhang & Shasha's (1989) ordered tree edit distance; insert, delete and relabel cost 1."""
    la, lla, kra = _postorder(a)
    lb, llb, krb = _postorder(b)
    tree = [[0] * len(lb) for _ in la]
    for i in kra:
        for j in krb:
            li, lj = lla[i], llb[j]
            forest = [[0] * (j - lj + 2) for _ in range(i - li + 2)]
            for x in range(1, i - li + 2):
                forest[x][0] = x
            for y in range(1, j - lj + 2):
                forest[0][y] = y
            for x in range(1, i - li + 2):
                for y in range(1, j - lj + 2):
                    ix, jy = li + x - 1, lj + y - 1
                    if lla[ix] == li and llb[jy] == lj:  # both prefixes are whole trees
                        forest[x][y] = min(forest[x - 1][y] + 1, forest[x][y - 1] + 1,
                                           forest[x - 1][y - 1] + (la[ix] != lb[jy]))
                        tree[ix][jy] = forest[x][y]
                    else:
                        forest[x][y] = min(forest[x - 1][y] + 1, forest[x][y - 1] + 1,
                                           forest[lla[ix] - li][llb[jy] - lj] + tree[ix][jy])
    return tree[-1][-1]


def tree_similarity(pred: Node, ref: Node) -> float:
    largest = max(len(pred), len(ref))
    return 1.0 if largest == 0 else max(0.0, 1.0 - tree_edit_distance(pred, ref) / largest)


def token_accuracy(pred: Node, ref: Node) -> float:
    p, r = dsl_tokens(pred), dsl_tokens(ref)
    if not r:
        return float(not p)
    return sum(a == b for a, b in zip(p, r)) / len(r)


def score_trees(pred: Node, ref: Node) -> dict[str, float]:
    precision, recall, f1 = element_scores(pred, ref)
    return {
        "dsl_exact": float(to_dsl(pred) == to_dsl(ref)),
        "exact_but_colour": float(_colourless(pred) == _colourless(ref)),
        "structure_match": float(_skeleton(pred) == _skeleton(ref)),
        "element_precision": precision, "element_recall": recall, "element_f1": f1,
        "tree_similarity": tree_similarity(pred, ref),
        "token_accuracy": token_accuracy(pred, ref),
    }


# ---------------------------------------------------------------- visual

def _lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (0-255) to CIE L*a*b* under D65."""
    linear = [((c / 255 + 0.055) / 1.055) ** 2.4 if c / 255 > 0.04045 else c / 255 / 12.92 for c in rgb]
    r, g, b = linear
    xyz = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b, \
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    f = [t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def colour_similarity(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    distance = sum((p - q) ** 2 for p, q in zip(_lab(a), _lab(b))) ** 0.5
    return max(0.0, 1.0 - distance / 100)


def block_scores(pred: list[Block], ref: list[Block], page: tuple[float, float]) -> dict[str, float]:
    """Match blocks (greedy, nearest first) and score them; `page` is the (width, height) to normalise by."""
    if not pred and not ref:
        return dict.fromkeys(VISUAL_METRICS, 1.0)
    w, h = page

    def offset(p: Block, r: Block) -> tuple[float, float, float]:
        dx = abs(p.x + p.w / 2 - r.x - r.w / 2) / w
        dy = abs(p.y + p.h / 2 - r.y - r.h / 2) / h
        return dx + dy + abs(p.w - r.w) / w + abs(p.h - r.h) / h, dx, dy

    pairs = sorted((offset(p, r)[0], i, j) for i, p in enumerate(pred) for j, r in enumerate(ref))
    used_p, used_r, matches = set(), set(), []
    for cost, i, j in pairs:
        if cost <= MATCH_LIMIT and i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            matches.append((pred[i], ref[j]))
    if not matches:
        return dict.fromkeys(VISUAL_METRICS, 0.0)
    block_match = sum(_area(p) + _area(r) for p, r in matches) / (sum(map(_area, pred)) + sum(map(_area, ref)))
    position = sum(1 - max(offset(p, r)[1:]) for p, r in matches) / len(matches)
    colour = sum(colour_similarity(p.colour, r.colour) for p, r in matches) / len(matches)
    return {"block_match": block_match, "position": position, "colour": colour,
            "visual": (block_match + position + colour) / 3}


def _area(block: Block) -> float:
    return block.w * block.h


def visual_scores(browser: Chromium, html: str, ref_html: str) -> dict[str, float]:
    pred_blocks, pred_size = browser.blocks(html)
    ref_blocks, ref_size = browser.blocks(ref_html)
    page = (max(pred_size[0], ref_size[0]), max(pred_size[1], ref_size[1]))
    return block_scores(pred_blocks, ref_blocks, page)


def aggregate(samples: list[dict]) -> dict[str, float]:
    """The mean of every metric over the samples that have it."""
    keys = [k for k in (*TREE_METRICS, *VISUAL_METRICS) if any(k in s for s in samples)]
    return {k: sum(s[k] for s in samples if k in s) / sum(k in s for s in samples) for k in keys}
