"""On pix2code's web set, read where it lies beside the checkout (../shared/data/pix2code-web)."""

import json
from pathlib import Path

import pytest

from vlm.sketch import (
    PAGE_MAPPING,
    compile_html,
    evaluate_sketch2html,
    html_to_tree,
    parse_dsl,
    pix2code_mapping,
    pix2code_split,
    read_pix2code,
    to_gui,
)
from vlm.sketch.html import text_nodes

DATA = Path(__file__).parents[2] / "shared/data/pix2code-web"
pytestmark = pytest.mark.skipif(not (DATA / "train").is_dir(), reason=f"pix2code's web set is not at {DATA}")


@pytest.fixture(scope="module")
def guis() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((DATA / "train").glob("*.gui"))}


def test_all_700_files_are_page_dsl_and_rewrite_byte_for_byte(guis):
    assert len(guis) == 700
    for name, text in guis.items():
        assert to_gui(parse_dsl(text)) == text, name


@pytest.mark.parametrize("mapping", ["pix2code", "page"])
def test_dsl_html_dsl_round_trip_on_all_700_files(guis, mapping):
    mapping = pix2code_mapping(DATA) if mapping == "pix2code" else PAGE_MAPPING
    for name, text in guis.items():
        tree = parse_dsl(text)
        html = compile_html(tree, mapping=mapping, seed=len(name), letters=True)
        assert html_to_tree(html, mapping=mapping) == tree, name


def _pix2code_compiler(gui: str, mapping: dict) -> str:
    """pix2code's own compiler (Compiler.py), line by line as it reads a .gui file, every text 'X'."""
    root = ["body", None, []]
    parent = root
    for line in gui.splitlines():
        token = line.replace(" ", "")
        if "{" in token:
            node = [token.replace("{", ""), parent, []]
            parent[2].append(node)
            parent = node
        elif "}" in token:
            parent = parent[1]
        else:
            parent[2].extend([t, parent, []] for t in token.split(","))

    def render(node):
        content = "".join(render(child) for child in node[2])
        value = mapping[node[0]].replace("[]", "X")
        return value.replace("{}", content) if node[2] else value
    return render(root)


def test_pix2code_mapping_compiles_exactly_as_pix2code(guis):
    raw = json.loads((DATA / "web-dsl-mapping.json").read_text())
    mapping = pix2code_mapping(DATA)
    for name, text in list(guis.items())[:100]:
        tree = parse_dsl(text)
        texts = ["X"] * len(text_nodes(tree))
        assert compile_html(tree, mapping=mapping, texts=texts) == _pix2code_compiler(text, raw), name


def test_split_is_sorted_with_the_last_tenth_for_validation():
    train, val = pix2code_split(DATA)
    names = [s.name for s in train + val]
    assert names == sorted(names) and len(names) == 700
    assert (len(train), len(val)) == (630, 70)
    sample = val[0]
    assert sample.load_image().size == (800, 460)
    assert sample.tree == parse_dsl((DATA / "train" / f"{sample.name}.gui").read_text())
    assert html_to_tree(sample.html) == sample.tree


def test_evaluation_of_a_perfect_and_an_empty_model():
    samples = read_pix2code(DATA)[-16:]
    mapping = pix2code_mapping(DATA)
    by_image = {}

    def oracle(images):  # answers in pix2code's own Bootstrap HTML
        return [compile_html(by_image[id(image)].tree, mapping=mapping) for image in images]

    for sample in samples:  # images are opened in predict's batch: key them as they load
        sample.image = sample.load_image()
        by_image[id(sample.image)] = sample
    perfect = evaluate_sketch2html(oracle, samples, batch_size=5, mappings=(PAGE_MAPPING, mapping))
    assert perfect["aggregate"]["samples"] == 16
    assert all(v == 1.0 for k, v in perfect["aggregate"].items() if k != "samples")
    empty = evaluate_sketch2html(lambda images: [""] * len(images), samples)
    assert all(v == 0.0 for k, v in empty["aggregate"].items() if k != "samples")
    assert empty["samples"][0]["prediction"] == "" and empty["samples"][0]["reference"].startswith("header {")
