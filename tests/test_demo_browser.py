"""The demo end to end: `vlm demo` on a free port, driven in headless Chromium like a user would.

Each tab gets an upload and a submit, and must show the model's answer; the HTML preview must be a
sandboxed iframe in which scripts never run. Screenshots go to the test's tmp folder, or to
$VLM_DEMO_SCREENSHOTS (docs/images for the README's pictures).
"""

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from test_cli import CAT, SKETCH, serve_demo, tiny_model  # noqa: F401  (tiny_model is a fixture)

from vlm.cli import load_demo_app
from vlm.sketch.browser import CHROMIUM, CHROMIUM_ARGS, chromium_missing

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=f"needs headless Chromium: {chromium_missing()}")
TIMEOUT_MS = 60_000  # the slowest step, a 512-token page on a busy machine, takes a few seconds


@pytest.fixture(scope="module")
def demo(tiny_model, tmp_path_factory):  # noqa: F811
    with serve_demo(tiny_model, log=tmp_path_factory.mktemp("demo") / "demo.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo):
    """The demo in a fresh tab, which must ask nothing of any other host."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.set_default_timeout(TIMEOUT_MS)
    elsewhere = []

    def note(request):
        if not request.url.startswith((demo, "data:", "blob:")):
            elsewhere.append(request.url)

    page.on("request", note)
    page.goto(demo, wait_until="networkidle")
    yield page
    page.close()
    assert elsewhere == []  # offline-ready: no fonts, scripts or analytics from the internet


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """A small PNG (256 colours) of the page, for the README."""
    for close in page.get_by_test_id("toast-close").all():
        close.click()
    page.wait_for_timeout(1000)  # Gradio fades new outputs in
    folder = Path(os.environ.get("VLM_DEMO_SCREENSHOTS") or tmp_path)
    path = folder / f"demo-{name}.png"
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert Image.open(path).size == (1100, 820)
    return path


def test_chat_streams_an_answer_about_an_uploaded_image_then_retries_and_clears(page, tmp_path):
    page.get_by_text("Generation settings").click()
    page.get_by_label("number input for Max new tokens").fill("150")  # long enough to watch it stream
    page.get_by_label("number input for Max new tokens").press("Enter")
    page.locator("#chat-input input[type=file]").set_input_files(CAT)
    page.locator("#chat-input .thumbnail-image, #chat-input img").first.wait_for()
    page.locator("#chat-input textarea").fill("What is in this picture?")
    page.evaluate("""() => { window.lengths = []; setInterval(() => {  // the answer's length, every 20 ms
        const answer = document.querySelector('#chatbot [data-testid=bot]');
        if (answer) window.lengths.push(answer.innerText.trim().length) }, 20) }""")
    page.locator("#chat-input textarea").press("Enter")
    answered = ("() => document.querySelector('#chatbot [data-testid=bot]') "
                "&& !document.querySelector('#chat-input textarea').disabled")  # the box is off while it streams
    page.wait_for_function(answered)
    user, bot = page.locator("#chatbot [data-testid=user]"), page.locator("#chatbot [data-testid=bot]")
    answer = bot.first.inner_text().strip()
    assert answer and set(page.evaluate("window.lengths")) - {0, len(answer)}  # seen part-way: it streamed in
    asked = user.count()  # the picture and the question, each in a bubble of its own
    assert user.locator("img").count() == 1 and "What is in this picture?" in " ".join(user.all_inner_texts())
    screenshot(page, "chat", tmp_path)

    page.evaluate("window.lengths = []")
    page.locator("#chat-retry").click()  # greedy decoding: the same answer again, in place of the old one
    page.wait_for_function(f"() => window.lengths.some(n => n < {len(answer)}) && ({answered})()")
    assert bot.count() == 1 and bot.first.inner_text().strip() == answer and user.count() == asked

    page.locator("#chat-clear").click()
    page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=bot]')")


def test_sketch_to_html_shows_the_page_in_a_sandboxed_iframe_and_its_code(page, tmp_path):
    page.get_by_role("tab", name="Sketch to HTML").click()
    page.locator("#sketch-run").click()  # nothing drawn yet
    toast = page.get_by_test_id("toast-body").first
    assert "Draw a sketch or upload a photo of one first." in toast.inner_text()
    page.get_by_test_id("toast-close").first.click()

    page.locator("#sketchpad input[type=file]").set_input_files(SKETCH)
    srcdoc = "(document.querySelector('#sketch-preview iframe').getAttribute('srcdoc') || '')"
    for _ in range(10):  # the editor draws the photo on its canvas in its own time; until then it is blank
        page.locator("#sketch-run").click()
        page.wait_for_function(f"() => {srcdoc}.includes('<html') || document.querySelector('[data-testid=toast-body]')")
        if "<html" in page.evaluate(f"() => {srcdoc}"):
            break
        page.get_by_test_id("toast-close").first.click()
        page.wait_for_timeout(500)
    frame = page.locator("#sketch-preview iframe")
    assert frame.count() == 1 and frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    page_html = frame.get_attribute("srcdoc")
    assert page_html.startswith("<!DOCTYPE html>")
    code = page.locator("#sketch-html")
    assert "<!DOCTYPE html>" in code.inner_text()
    assert code.get_by_role("button", name="Copy").count() == 1 and code.get_by_role("button", name="Download").count() == 1
    screenshot(page, "sketch", tmp_path)


def test_the_preview_sandbox_stops_scripts_in_the_generated_page(browser):
    """Whatever HTML comes back, it cannot run code in the demo's page or in its own frame.
    (Without the sandbox attribute both titles change: the srcdoc page shares the demo's origin.)"""
    hostile = ("<script>parent.document.title = 'owned'; document.title = 'ran'</script>"
               "<img src=x onerror=\"parent.document.title = 'owned'\"><p id=ok>still shown</p>")
    page = browser.new_page()
    page.set_content(f"<title>demo</title>{load_demo_app().iframe(hostile)}")
    page.frame_locator("iframe").locator("#ok").wait_for()
    page.wait_for_timeout(300)
    assert page.title() == "demo"
    assert page.frames[1].evaluate("() => document.title") == ""  # not even inside the frame
    page.close()


def test_caption_and_questions_about_an_uploaded_photo(page, tmp_path):
    page.get_by_role("tab", name="Caption and VQA").click()
    page.locator("#caption-image input[type=file]").set_input_files(CAT)
    page.locator("#caption-questions textarea").fill("What animal is this?\nWhat colour is it?")
    page.locator("#caption-run").click()
    page.wait_for_function("() => document.querySelector('#caption-text textarea').value.trim().length > 0")

    def cell(row, column):
        return page.locator(f"#caption-answers [data-testid=cell-{row}-{column}]")

    cell(1, 1).wait_for()
    assert [cell(row, 0).inner_text().strip() for row in (0, 1)] == ["What animal is this?", "What colour is it?"]
    assert cell(0, 1).inner_text().strip() and cell(1, 1).inner_text().strip() and cell(2, 0).count() == 0
    screenshot(page, "caption", tmp_path)


def test_a_file_that_is_not_an_image_gets_a_message_naming_it(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    page.get_by_role("tab", name="Caption and VQA").click()
    page.locator("#caption-image input[type=file]").set_input_files(notes)
    page.locator("#caption-run").click()
    toast = page.locator(".toast-body").first
    toast.wait_for()
    assert "notes.png: not a supported image" in toast.inner_text() and "Traceback" not in toast.inner_text()
    assert page.locator("#caption-text textarea").input_value() == ""
