import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm.sketch import Mapping, compile_html, generate_page, html_to_tree, parse_dsl
from vlm.sketch.dsl import Node
from vlm.sketch.html import MAX_DEPTH, fill_texts, text_nodes


def test_generated_pages_round_trip_dsl_html_dsl():
    for seed in range(200):
        page = generate_page(seed)
        assert html_to_tree(page.html) == page.tree, page.dsl


def test_html_is_self_contained():
    html = generate_page(3).html
    assert not re.search(r"(src|href)=\"(?!#)", html)
    assert "http" not in html and "url(" not in html and "<script" not in html
    assert "<style>" in html and "{}" not in html and "[]" not in html


def test_texts_are_deterministic_and_fill_every_slot():
    tree = parse_dsl("nav { logo , link } row { single { big-title , text , btn-green , image } }")
    assert compile_html(tree, seed=5) == compile_html(tree, seed=5) != compile_html(tree, seed=6)
    texts = fill_texts(tree, __import__("random").Random(0))
    assert len(texts) == len(text_nodes(tree)) == 6
    assert all(text in compile_html(tree, texts=texts) for text in texts)
    with pytest.raises(ValueError, match="2 texts for 6 text elements"):
        compile_html(tree, texts=texts[:2])


def test_mapping_without_a_token_says_so():
    mapping = Mapping("tiny", {"page": "<body>{}</body>", "row": '<div class="row">{}</div>', "single": "<div>{}</div>"})
    with pytest.raises(ValueError, match="mapping 'tiny' has no template for 'text'"):
        compile_html(parse_dsl("row { single { text } }"), mapping=mapping)


def test_mapping_with_ambiguous_signatures_is_refused():
    with pytest.raises(ValueError, match="the same signature"):
        Mapping("twins", {"page": "<body>{}</body>", "text": "<p>[]</p>", "label": "<p>[]</p>"})


def test_inverse_looks_through_unknown_wrappers_and_ignores_text():
    html = """<html><body><section><div class="row"><div class="col double extra">
              <h2>Hi</h2><span><p>some text</p></span></div></div></section></body></html>"""
    assert html_to_tree(html) == parse_dsl("row { double { big-title , text } }")


def test_inverse_tolerates_unclosed_and_stray_tags():
    html = '<div class="row"><div class="col single"><p>one<p>two</span></p><button class="btn btn-red">x'
    assert html_to_tree(html) == parse_dsl("row { single { text text btn-red } }")


@pytest.mark.parametrize("garbage", ["", "no markup at all", "<<<>>>", "<!", "<![CDATA[", "</div></div>", "\x00\ufffd<p"])
def test_garbage_is_an_empty_page(garbage):
    assert html_to_tree(garbage) == Node("page")


def test_deep_nesting_does_not_exhaust_the_stack():
    tree = html_to_tree('<div class="row">' * 5000 + "<p>x</p>")
    depth, node = 0, tree
    while node.children:
        depth, node = depth + 1, node.children[0]
    assert depth <= MAX_DEPTH and len(tree) == 5001  # markup past the limit is kept, flattened


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list("<>/=\"' !-x[]{}") + ["div", "class=", "row", "<p>", "btn", "<!--", "<!"]), max_size=80))
def test_any_string_parses_to_a_tree(pieces):
    assert html_to_tree("".join(pieces)).token == "page"
