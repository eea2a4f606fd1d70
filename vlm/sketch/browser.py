"""Headless Chromium, through playwright, for screenshots and rendered block boxes.

Optional at run time: it uses the system's /usr/bin/chromium (never `playwright install`) and
blocks every network request, so a page renders the same offline and online.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
CSS_WIDTH = 1200  # the viewport the layout engine and pix2code's screenshots assume


def chromium_missing() -> str | None:
    """Why Chromium cannot be used here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@dataclass(frozen=True)
class Block:
    """A rendered element that shows something: text, a control, an image or a filled box."""
    x: float
    y: float
    w: float
    h: float
    colour: tuple[int, int, int]  # its text colour, or its background where it has no text


# An element is a block if it has text of its own, is a control or picture, or is an empty box
# painted with a background or border; its colour is what a viewer sees of it.
_BLOCKS_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || [0, 0, 0, 0]).map(Number);
  const painted = s => { const c = rgb(s); return c.length < 4 || c[3] > 0; };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (painted(c)) return rgb(c).slice(0, 3);
    }
    return [255, 255, 255];
  };
  const controls = new Set(["INPUT", "SELECT", "TEXTAREA", "BUTTON", "IMG", "SVG", "VIDEO", "CANVAS"]);
  const out = [];
  for (const el of document.body ? document.body.querySelectorAll("*") : []) {
    const style = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1 || style.visibility === "hidden" || style.display === "none") continue;
    const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const picture = style.backgroundImage !== "none" || el.getAttribute("role") === "img";
    const box = !el.children.length && (painted(style.backgroundColor) || parseFloat(style.borderTopWidth) > 0);
    if (!(text || controls.has(el.tagName.toUpperCase()) || picture || box)) continue;
    const colour = text ? rgb(style.color).slice(0, 3) : background(el);
    out.push([r.left + scrollX, r.top + scrollY, r.width, r.height, ...colour.map(Math.round)]);
  }
  return {blocks: out, width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight};
}"""


class Chromium:
    """One browser for many pages: `with Chromium() as browser: browser.screenshot(html)`."""

    def __enter__(self) -> Chromium:
        reason = chromium_missing()
        if reason:
            raise RuntimeError(f"headless Chromium is not available: {reason}")
        from playwright.sync_api import sync_playwright
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        return self

    def __exit__(self, *exc) -> None:
        self._browser.close()
        self._playwright.stop()

    def _open(self, html: str, viewport: tuple[int, int], scale: float = 1.0):
        page = self._browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=scale)
        page.route("**/*", lambda route: route.abort())  # offline: no CDN, no fonts, no trackers
        page.set_content(html, wait_until="load")
        return page

    def screenshot(self, html: str, *, size: tuple[int, int] = (800, 600)) -> Image.Image:
        """The whole page as a `size` image, laid out CSS_WIDTH pixels wide: filling the width, or, when it is
        taller than the picture, shrunk to fit and centred on the page's own background (as the pix2code style
        draws a long page: nothing the HTML holds is cropped away)."""
        scale = size[0] / CSS_WIDTH
        page = self._open(html, (CSS_WIDTH, round(size[1] / scale)), scale)
        try:
            png = page.screenshot(type="png", full_page=True)
        finally:
            page.close()
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if image.height <= size[1] + 1:  # + 1: rounding of the viewport's height
            return image if image.size == size else image.resize(size, Image.BILINEAR)
        shrunk = image.resize((max(1, round(image.width * size[1] / image.height)), size[1]), Image.BILINEAR)
        picture = Image.new("RGB", size, image.getpixel((0, image.height - 1)))
        picture.paste(shrunk, ((size[0] - shrunk.width) // 2, 0))
        return picture

    def blocks(self, html: str) -> tuple[list[Block], tuple[float, float]]:
        """The page's blocks in CSS pixels, and the page's (width, height)."""
        page = self._open(html, (CSS_WIDTH, 800))
        try:
            found = page.evaluate(_BLOCKS_JS)
        finally:
            page.close()
        blocks = [Block(x, y, w, h, (r, g, b)) for x, y, w, h, r, g, b in found["blocks"]]
        return blocks, (found["width"], found["height"])
