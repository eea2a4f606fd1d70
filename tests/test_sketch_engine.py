import random
from collections import Counter

import numpy as np
import pytest

from vlm.sketch import (
    STYLES,
    chromium_missing,
    describe,
    generate_page,
    html_to_tree,
    load_samples,
    make_page,
    page_questions,
    parse_dsl,
    render,
    write_generated_set,
)
from vlm.sketch.dsl import PIX2CODE_TOKENS, TOKENS
from vlm.sketch.browser import CSS_WIDTH
from vlm.sketch.layout import layout
from vlm.sketch.render import COLOURS, DEFAULT_SIZE, placement

PIL_STYLES = ("sketch", "wireframe", "pix2code")


@pytest.mark.parametrize("vocabulary", ["full", "pix2code"])
def test_same_seed_same_page_other_seed_other_page(vocabulary):
    a, b = generate_page(11, vocabulary=vocabulary), generate_page(11, vocabulary=vocabulary)
    assert (a.dsl, a.html, a.texts) == (b.dsl, b.html, b.texts)
    assert len({generate_page(s, vocabulary=vocabulary).dsl for s in range(20)}) == 20


@pytest.mark.parametrize("style", PIL_STYLES)
def test_same_seed_same_image_bytes(style):
    page = generate_page(5)
    first, again = render(page, style=style), render(generate_page(5), style=style)
    assert first.mode == "RGB" and first.size == ((800, 460) if style == "pix2code" else (800, 600))
    assert first.tobytes() == again.tobytes()
    assert render(generate_page(6), style=style).tobytes() != first.tobytes()


def test_sketch_seed_varies_the_drawing_not_the_page():
    page = generate_page(2)
    drawings = {render(page, style="sketch", seed=s).tobytes() for s in range(4)}
    assert len(drawings) == 4


def test_images_are_not_blank_and_size_is_honoured():
    page = generate_page(9)
    for style in PIL_STYLES:
        image = render(page, style=style, size=(400, 300))
        assert image.size == (400, 300)
        assert len(image.getcolors(1 << 24)) > 5, style


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown style 'pencil'"):
        render(generate_page(0), style="pencil")
    with pytest.raises(ValueError, match="vocabulary must be"):
        generate_page(0, vocabulary="bootstrap")


def test_full_vocabulary_uses_the_whole_dsl():
    seen = Counter(n.token for s in range(300) for n in generate_page(s).tree.walk())
    assert set(seen) == set(TOKENS)
    pix2code = Counter(n.token for s in range(100) for n in generate_page(s, vocabulary="pix2code").tree.walk())
    assert set(pix2code) <= PIX2CODE_TOKENS | {"page"}


def test_layout_places_every_element_inside_the_page():
    for seed in range(50):
        page = generate_page(seed)
        boxes = layout(page.tree, page.texts)
        assert [b.token for b in boxes.boxes] == [n.token for n in page.tree.walk()][1:]
        for box in boxes.boxes:
            assert 0 <= box.x and box.x + box.w <= boxes.width + 0.01 and 0 <= box.y <= boxes.height, box


def test_placement_says_where_render_draws_each_box():
    # each button's box, placed as its style says, holds the button's colour; placed as another style says,
    # some box misses its button (the sketch's fills are hatched and tilted, so less of its box is coloured)
    def colour_shares(style: str, placed_as: str) -> list[float]:
        shares = []
        for seed in range(20):
            page = generate_page(seed)
            boxes = layout(page.tree, page.texts, width=CSS_WIDTH)
            width, height = DEFAULT_SIZE[style]
            pixels = np.asarray(render(page, style=style)).astype(int)
            scale, left, top = placement(boxes, placed_as, (width, height))
            for box in boxes.boxes:
                if TOKENS[box.token].get("name") == "button":  # every one: no style crops the page
                    x0, y0 = int(left + box.x * scale), int(top + box.y * scale)
                    x1, y1 = int(left + (box.x + box.w) * scale), int(top + (box.y + box.h) * scale)
                    near = np.abs(pixels[y0:y1, x0:x1] - COLOURS[TOKENS[box.token]["colour"]]).sum(-1) < 100
                    shares.append(near.mean())
        return shares

    for style, least in (("wireframe", 0.5), ("pix2code", 0.5), ("sketch", 0.02)):
        own = colour_shares(style, style)
        assert len(own) > 20 and min(own) > least, (style, min(own))
        for other in set(PIL_STYLES) - {style}:
            assert min(colour_shares(style, other)) < least, (style, other)
    with pytest.raises(ValueError, match="not 'browser'"):
        placement(layout(generate_page(0).tree, generate_page(0).texts), "browser", (800, 600))


def test_pix2code_style_fills_the_width_and_shrinks_a_long_page_to_fit_whole():
    # the page's DSL names every element, so the picture must show every one: a long page is not cropped
    def placed(seed: int):
        page = generate_page(seed)
        boxes = layout(page.tree, page.texts, width=CSS_WIDTH)
        return boxes, placement(boxes, "pix2code", DEFAULT_SIZE["pix2code"])

    width, height = DEFAULT_SIZE["pix2code"]
    short = [placed(seed) for seed in range(90_000_000, 90_000_040) if placed(seed)[0].height < 500]
    long = [placed(seed) for seed in range(90_000_000, 90_000_040) if placed(seed)[0].height > 1000]
    assert short and long
    for boxes, (scale, left, top) in short:
        assert (scale, left, top) == (width / CSS_WIDTH, 0.0, 0.0)
    for boxes, (scale, left, top) in long:
        assert scale < width / CSS_WIDTH and left > 0 and top == 0
        assert max(box.y + box.h for box in boxes.boxes) * scale < height  # the last element is in the picture
        assert left + boxes.width * scale / 2 == pytest.approx(width / 2)


def test_pix2code_tree_renders_like_a_screenshot():
    tree = parse_dsl("header { btn-active , btn-inactive } row { single { small-title , text , btn-green } }")
    image = render(make_page(tree, letters=True), style="pix2code")
    pixels = {colour: count for count, colour in image.getcolors(1 << 24)}
    assert pixels[(245, 245, 245)] > 20000  # the grey column box
    assert pixels[(92, 184, 92)] > 300  # the green button
    assert pixels[(51, 122, 183)] > 300  # the active navigation pill


@pytest.mark.skipif(chromium_missing() is not None, reason=f"headless Chromium is not usable: {chromium_missing()}")
def test_browser_style_renders_the_html():
    image = render(generate_page(4), style="browser", size=(400, 300))
    assert image.size == (400, 300) and len(image.getcolors(1 << 24)) > 5


@pytest.mark.skipif(chromium_missing() is not None, reason=f"headless Chromium is not usable: {chromium_missing()}")
def test_browser_style_shrinks_a_long_page_to_fit_whole():
    page = generate_page(90_000_003)  # 1,118 CSS pixels tall: 373 at this width, in a picture 300 tall
    assert layout(page.tree, page.texts, width=CSS_WIDTH).height > 1000
    pixels = np.asarray(render(page, style="browser", size=(400, 300)))
    assert pixels.shape == (300, 400, 3)
    margins = np.concatenate([pixels[:, :30], pixels[:, -30:]], axis=1)  # shrunk by 300/373: 39 pixels a side
    assert (margins == margins[0, 0]).all() and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5


def test_browser_style_without_chromium_says_why(monkeypatch):
    monkeypatch.setattr("vlm.sketch.browser.CHROMIUM", __import__("pathlib").Path("/nonexistent/chromium"))
    with pytest.raises(RuntimeError, match="headless Chromium is not available"):
        render(generate_page(4), style="browser")


def test_description_and_answers_follow_the_tree():
    tree = parse_dsl("""nav { logo , link , btn-blue }
                        row { double { big-title , text , btn-red , btn-green }
                              double { form { label , input , checkbox , radio , radio , btn-orange } } }
                        footer { text }""")
    page = make_page(tree)
    assert describe(page) == "A page with a navigation bar, 1 row of 2 columns, a form with 4 fields, 4 buttons and a footer."
    answers = dict(page_questions(page, random.Random(0), n=100))
    assert answers["How many buttons are there?"] == "4"
    assert answers["What colour is the first button?"] == "blue"
    assert answers["What colour is the last button?"] == "orange"
    assert answers["What colour is the submit button?"] == "orange"
    assert answers["How many radio buttons are there?"] == "2"
    assert answers["Is there a form?"] == answers["Is there a footer?"] == "yes"
    assert answers["How many columns does the first row have?"] == "2"
    assert all(answer in ("no", "0") for question, answer in answers.items() if "header" in question or "card" in question)


def test_answers_match_the_tree_on_generated_pages():
    for seed in range(100):
        page = generate_page(seed, vocabulary="pix2code" if seed % 2 else "full")
        tokens = Counter(n.token for n in page.tree.walk())
        buttons = sum(tokens[t] for t in ("btn-green", "btn-orange", "btn-red", "btn-blue", "btn-grey"))
        for question, answer in page_questions(page, random.Random(seed), n=100):
            if question == "How many buttons are there?":
                assert answer == str(buttons)
            elif question == "How many rows are there?":
                assert answer == str(tokens["row"])
            elif question == "Is there a form?":
                assert answer == ("yes" if tokens["form"] else "no")
            elif question == "Which navigation button is active?":
                header = next(n for n in page.tree.children if n.token == "header")
                assert header.children[["first", "second", "third", "fourth", "fifth"].index(answer)].token == "btn-active"
        assert describe(page).startswith("A page with ")


def test_questions_are_deterministic_for_a_seed():
    page = generate_page(1)
    assert page_questions(page, random.Random(3)) == page_questions(page, random.Random(3))
    assert len(page_questions(page, random.Random(3), n=4)) == 4


def test_generated_set_is_reproducible_and_loads_back(tmp_path):
    first = write_generated_set(tmp_path / "a", 3, seed=7, styles=("sketch", "wireframe"))
    again = write_generated_set(tmp_path / "b", 3, seed=7, styles=("sketch", "wireframe"))
    assert [p.name for p in first] == ["00000-sketch.png", "00000-wireframe.png", "00001-sketch.png",
                                       "00001-wireframe.png", "00002-sketch.png", "00002-wireframe.png"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again))
    samples = load_samples(tmp_path / "a")
    assert [s.name for s in samples] == [p.stem for p in first]
    assert all(html_to_tree(s.html) == s.tree for s in samples)
    (tmp_path / "a" / "00000-sketch.gui").unlink()  # the .html alone then gives the tree
    assert load_samples(tmp_path / "a")[0].tree == samples[0].tree


def test_load_samples_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="holds no NAME.png"):
        load_samples(tmp_path)
    render(generate_page(0), style="wireframe").save(tmp_path / "lonely.png")
    with pytest.raises(ValueError, match="has no lonely.gui or lonely.html"):
        load_samples(tmp_path)
    (tmp_path / "lonely.gui").write_text("row { text }")
    with pytest.raises(ValueError, match="lonely.gui: line 1: 'text' is not allowed inside 'row'"):
        load_samples(tmp_path)
    with pytest.raises(ValueError, match="unknown styles"):
        write_generated_set(tmp_path, 1, 0, styles=("oil",))


def test_styles_are_the_documented_four():
    assert STYLES == ("sketch", "wireframe", "pix2code", "browser")
