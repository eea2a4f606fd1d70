import pytest

from vlm.sketch import generate_page, parse_dsl, to_dsl, to_gui
from vlm.sketch.dsl import PIX2CODE_TOKENS, TOKENS, Node, dsl_tokens, is_container


def test_parse_accepts_any_whitespace_and_optional_commas():
    canonical = "header { btn-active , btn-inactive } row { double { small-title , text , btn-green } double { text } }"
    squeezed = "header{btn-active,btn-inactive}row{double{small-title,text,btn-green}double{text}}"
    spread = "header {\n  btn-active\n  btn-inactive\n}\n\trow {\ndouble {\nsmall-title, text, btn-green\n}\ndouble { text }\n}\n"
    trees = {parse_dsl(text) for text in (canonical, squeezed, spread)}
    assert len(trees) == 1
    assert to_dsl(trees.pop()) == canonical


def test_tree_shape():
    tree = parse_dsl("row { single { card { image , text } , btn-red } }")
    assert tree == Node("page", (Node("row", (Node("single", (
        Node("card", (Node("image"), Node("text"))), Node("btn-red"))),)),))
    assert len(tree) == 6
    assert [n.token for n in tree.walk()] == ["page", "row", "single", "card", "image", "text", "btn-red"]


def test_gui_layout_matches_pix2code():
    tree = parse_dsl("header { btn-active } row { single { small-title , text , btn-red } }")
    assert to_gui(tree) == "header {\nbtn-active\n}\nrow {\nsingle {\nsmall-title, text, btn-red\n}\n}\n"


def test_canonical_commas_only_between_elements():
    tree = parse_dsl("row { single { text card { text } text } } footer { text , link }")
    assert to_dsl(tree) == "row { single { text card { text } text } } footer { text , link }"
    assert dsl_tokens(tree)[:4] == ["row", "{", "single", "{"]


@pytest.mark.parametrize("text, message", [
    ("row { single { text }", "unclosed 'row'"),
    ("row { single { text } } }", "'}' closes nothing"),
    ("row { single { paragraf } }", "unknown token 'paragraf'"),
    ("row { text }", "'text' is not allowed inside 'row'"),
    ("header { btn-active }\nrow { single { btn-active } }", "line 2: 'btn-active' is not allowed inside 'single'"),
    ("row single { text } }", "container 'row' must be followed by '{'"),
    ("row { single { text { } } }", "'text' is an element and cannot hold children"),
    ("{ row }", "'{' must follow a container token"),
    ("row { single { text , , btn-red } }", "',' must stand between two elements"),
    ("row { single { , text } }", "',' must stand between two elements"),
    ("row { single { text , } }", "',' must stand between two elements"),
    ("page { }", "unknown token 'page'"),
])
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_dsl(text)


def test_empty_document_is_an_empty_page():
    assert parse_dsl("  \n") == Node("page")
    assert to_dsl(Node("page")) == ""


def test_vocabulary_table_is_consistent():
    for token, spec in TOKENS.items():
        for child in spec.get("children", ()):
            assert child in TOKENS, (token, child)
    assert PIX2CODE_TOKENS <= set(TOKENS)
    named = {"button", "checkbox", "radio button", "text box", "dropdown", "image", "heading", "link", "label", "paragraph"}
    assert named <= {spec.get("name") for spec in TOKENS.values()}  # the hand-drawn datasets' classes
    assert {t for t in TOKENS if t != "page" and is_container(t)} == {
        "header", "nav", "row", "single", "double", "triple", "quadruple", "card", "form", "footer"}


@pytest.mark.parametrize("vocabulary", ["full", "pix2code"])
def test_generated_pages_round_trip_through_both_forms(vocabulary):
    for seed in range(200):
        page = generate_page(seed, vocabulary=vocabulary)
        assert parse_dsl(page.dsl) == page.tree
        assert parse_dsl(to_gui(page.tree)) == page.tree
