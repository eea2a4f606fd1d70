import functools
import random

import pytest

from vlm.sketch import (
    Sample,
    chromium_missing,
    compile_html,
    evaluate_sketch2html,
    generate_page,
    html_to_tree,
    parse_dsl,
    render,
    score_trees,
    tree_edit_distance,
)
from vlm.sketch.browser import Block
from vlm.sketch.dsl import Node
from vlm.sketch.metrics import TREE_METRICS, block_scores, colour_similarity, element_table

GRADED = ("element_f1", "tree_similarity", "element_recall")


def _drop_leaves(tree: Node, keep) -> Node:
    """The tree without the leaves for which keep(index) is false (leaves counted in reading order)."""
    counter = iter(range(10**6))

    def visit(node):
        children = []
        for child in node.children:
            if child.children:
                children.append(visit(child))
            elif keep(next(counter)):
                children.append(child)
        return Node(node.token, tuple(children))
    return visit(tree)


def _pages():
    return [generate_page(s, vocabulary=v).tree for s in range(20) for v in ("full", "pix2code")]


def test_identical_pages_score_one():
    for tree in _pages():
        assert score_trees(tree, tree) == dict.fromkeys(TREE_METRICS, 1.0)


def test_empty_and_garbage_predictions_score_zero():
    for tree in _pages()[:6]:
        for html in ("", "<<garbage>>", "I cannot draw this page, sorry."):
            assert score_trees(html_to_tree(html), tree) == dict.fromkeys(TREE_METRICS, 0.0)


def test_fewer_removed_elements_score_higher():
    for tree in _pages():
        one_removed = _drop_leaves(tree, lambda i: i != 1)
        half_removed = _drop_leaves(tree, lambda i: i % 2 == 0)
        full, one, half = score_trees(tree, tree), score_trees(one_removed, tree), score_trees(half_removed, tree)
        for metric in GRADED:
            assert full[metric] > one[metric] > half[metric] > 0, (metric, tree)
        assert one["dsl_exact"] == half["dsl_exact"] == 0
        assert one["element_precision"] == 1.0  # nothing made up
        # token accuracy is position-wise (pix2code's): an early removal shifts all that follows,
        # so it is ordered for the last element
        leaves = sum(1 for n in tree.walk() if not n.children and n is not tree)
        last_removed = score_trees(_drop_leaves(tree, lambda i, last=leaves - 1: i != last), tree)
        assert 1.0 > last_removed["token_accuracy"] > half["token_accuracy"] > 0


def test_a_wrong_colour_keeps_the_structure():
    ref = parse_dsl("row { double { small-title , text , btn-green } double { small-title , text , btn-red } }")
    pred = parse_dsl("row { double { small-title , text , btn-green } double { small-title , text , btn-orange } }")
    scores = score_trees(pred, ref)
    assert scores["structure_match"] == scores["exact_but_colour"] == 1.0 and scores["dsl_exact"] == 0.0
    header = score_trees(parse_dsl("header { btn-active , btn-inactive }"), parse_dsl("header { btn-inactive , btn-active }"))
    assert header["exact_but_colour"] == 0.0  # which header button is active is not a colour
    assert scores["element_f1"] == pytest.approx(8 / 9)
    assert scores["tree_similarity"] == pytest.approx(1 - 1 / 9)


def test_element_table_counts_what_each_page_misses_and_makes_up():
    ref = parse_dsl("row { double { form { checkbox , input , btn-red } } double { text } }")
    pred = parse_dsl("row { double { text , btn-red } double { text } }")  # the form read as text
    table = element_table([(pred, ref), (ref, ref)])
    assert table["form"] == {"reference": 2, "predicted": 1, "matched": 1, "precision": 1.0, "recall": 0.5}
    assert table["text"] == {"reference": 2, "predicted": 3, "matched": 2, "precision": 2 / 3, "recall": 1.0}
    assert table["btn-red"]["recall"] == 1.0 and table["checkbox"]["recall"] == 0.5
    assert list(table)[:2] == ["double", "text"]  # most common in the references first, then most written
    # summed over tokens, the matches are element_scores' hits
    hits = sum(e["matched"] for e in table.values())
    assert hits == sum(score_trees(p, r)["element_recall"] * len(r) for p, r in [(pred, ref), (ref, ref)])


def test_tree_edit_distance_on_known_cases():
    a = parse_dsl("row { single { text , btn-red } double { text } }")
    assert tree_edit_distance(a, a) == 0
    assert tree_edit_distance(a, Node("page")) == 6
    assert tree_edit_distance(a, parse_dsl("row { single { text } double { text , btn-red } }")) == 2
    assert tree_edit_distance(a, parse_dsl("row { single { text , btn-green } double { text } }")) == 1


def _forest_distance(f1: tuple, f2: tuple) -> int:
    """The edit distance by its recursive definition (exponential without the cache), to check Zhang-Shasha."""
    @functools.lru_cache(maxsize=None)
    def d(f1, f2):
        if not f1 or not f2:
            return sum(len(t) + 1 for t in f1 + f2)
        v, w = f1[-1], f2[-1]
        return min(d(f1[:-1] + v.children, f2) + 1, d(f1, f2[:-1] + w.children) + 1,
                   d(v.children, w.children) + d(f1[:-1], f2[:-1]) + (v.token != w.token))
    return d(f1, f2)


def test_zhang_shasha_agrees_with_the_definition():
    rng = random.Random(0)

    def tree(depth=0):
        return Node(rng.choice("abc"), tuple(tree(depth + 1) for _ in range(rng.randint(0, 3 if depth < 2 else 0))))
    for _ in range(200):
        a, b = tree(), tree()
        assert tree_edit_distance(a, b) == _forest_distance((a,), (b,))


def test_block_scores():
    ref = [Block(0, 0, 100, 20, (51, 51, 51)), Block(0, 40, 60, 30, (92, 184, 92))]
    assert block_scores(ref, ref, (1200, 800)) == {"block_match": 1.0, "position": 1.0, "colour": 1.0, "visual": 1.0}
    assert block_scores([], ref, (1200, 800))["visual"] == 0.0
    moved = [Block(10, 5, 100, 20, (51, 51, 51)), Block(0, 40, 60, 30, (217, 83, 79))]
    partial = block_scores(moved, ref, (1200, 800))
    assert partial["block_match"] == 1.0 and 0.9 < partial["position"] < 1.0 and 0.4 < partial["colour"] < 0.6
    half = block_scores(ref[:1], ref, (1200, 800))
    assert half["block_match"] == pytest.approx(2 * 2000 / (2 * 2000 + 1800))
    assert colour_similarity((255, 255, 255), (0, 0, 0)) == 0.0


def test_evaluate_batches_and_survives_bad_output():
    pages = [generate_page(s) for s in range(5)]
    samples = [Sample(str(i), render(p, style="wireframe", size=(200, 150)), p.tree, p.html) for i, p in enumerate(pages)]
    calls = []

    def predict(images):
        calls.append(len(images))
        return [pages[int(s.name)].html if i % 2 else None for i, s in enumerate(samples[sum(calls) - len(images):sum(calls)])]

    result = evaluate_sketch2html(predict, samples, batch_size=2)
    assert calls == [2, 2, 1]
    assert [s["dsl_exact"] for s in result["samples"]] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert result["aggregate"]["dsl_exact"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="predict returned 1 outputs for 2 images"):
        evaluate_sketch2html(lambda images: ["<p>x</p>"], samples, batch_size=2)


@pytest.mark.skipif(chromium_missing() is not None, reason=f"headless Chromium is not usable: {chromium_missing()}")
def test_visual_scores_rank_edits():
    page = generate_page(3)
    half = compile_html(_drop_leaves(page.tree, lambda i: i % 2 == 0))
    answers = {"same": page.html, "half": half, "empty": ""}
    samples = [Sample(name, render(page, style="wireframe", size=(200, 150)), page.tree, page.html) for name in answers]
    result = evaluate_sketch2html(lambda images: list(answers.values()), samples, batch_size=3, visual=True)
    same, half, empty = (s["visual"] for s in result["samples"])
    assert same == 1.0 > half > empty == 0.0
