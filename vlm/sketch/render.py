"""Pictures of a page: hand-drawn sketch, clean wireframe, pix2code-like screenshot, browser.

"sketch", "wireframe" and "pix2code" draw the layout engine's boxes with PIL (fast, no
browser); "browser" renders the page's HTML with headless Chromium. All are deterministic
for a seed.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from .browser import CSS_WIDTH, Chromium
from .dsl import TOKENS
from .generate import Page
from .layout import BLOCKS, Box, Layout, layout

STYLES = ("sketch", "wireframe", "pix2code", "browser")
DEFAULT_SIZE = {"sketch": (800, 600), "wireframe": (800, 600), "pix2code": (800, 460), "browser": (800, 600)}

# Bootstrap 3's colours, which pix2code's pages and page-dsl-mapping.json use
COLOURS = {"green": (92, 184, 92), "orange": (240, 173, 78), "red": (217, 83, 79), "blue": (51, 122, 183),
           "grey": (108, 117, 125), "black": (51, 51, 51)}
BORDERS = {"green": (76, 174, 76), "orange": (238, 162, 54), "red": (212, 63, 58), "blue": (46, 109, 164),
           "grey": (90, 98, 104), "black": (51, 51, 51)}
PENS = ((25, 25, 30), (30, 50, 140), (85, 85, 92), (45, 40, 35))  # ballpoint, blue ink, pencil, felt tip
PAPERS = ((250, 249, 244), (246, 243, 232), (240, 240, 238), (252, 252, 252))
PIX2CODE_FOOTER = "\u00a9 Tony Beltramelli 2017"  # the footer every pix2code page carries
PIX2CODE_FOOTER_BELOW = 25  # CSS pixels that footer's line reaches below the laid-out page


def render(page: Page, *, style: str = "sketch", seed: int | None = None, size: tuple[int, int] | None = None,
           browser: Chromium | None = None) -> Image.Image:
    """An RGB picture of `page`. `seed` (default: the page's) varies the drawing, not the page.

    The browser style opens Chromium for the call unless an open `browser` is given.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    size = size or DEFAULT_SIZE[style]
    if style == "browser":
        if browser is not None:
            return browser.screenshot(page.html, size=size)
        with Chromium() as browser:
            return browser.screenshot(page.html, size=size)
    rng = random.Random(page.seed if seed is None else seed)
    boxes = layout(page.tree, page.texts, width=CSS_WIDTH)
    if style == "pix2code":
        return _Pix2code(size).draw(boxes)
    painter = _Sketch(size, rng) if style == "sketch" else _Wireframe(size)
    return painter.draw(boxes)


def _fit(boxes: Layout, size: tuple[int, int], *, below: float = 0.0) -> tuple[float, float]:
    """Scale and left offset that fit the whole page, and `below` more CSS pixels under it, into the picture."""
    scale = min(size[0] / boxes.width, size[1] / (boxes.height + below))
    return scale, (size[0] - boxes.width * scale) / 2


def placement(boxes: Layout, style: str, size: tuple[int, int]) -> tuple[float, float, float]:
    """Where `render` draws a laid-out page in a picture of `size` (width, height): (scale, left, top), so a
    point at CSS (x, y) lands at (left + x * scale, top + y * scale). The wireframe fits the whole page; the sketch
    fits it inside a 3% margin and then tilts the drawing up to 2.5 degrees about the centre; the pix2code style
    fills the width, as pix2code's screenshots do, unless the page with its copyright line is taller than the
    picture: then it fits the whole page too, since its DSL names every element and a cropped one cannot be read."""
    if style == "pix2code":
        return (*_fit(boxes, size, below=PIX2CODE_FOOTER_BELOW), 0.0)
    if style == "sketch":
        scale, left = _fit(boxes, (size[0] * 0.94, size[1] * 0.94))
        return scale, left + size[0] * 0.03, size[1] * 0.03
    if style == "wireframe":
        return (*_fit(boxes, size), 0.0)
    raise ValueError(f"placement is for the styles drawn with PIL (sketch, wireframe, pix2code), not {style!r}")


def _colour(token: str) -> str:
    return TOKENS[token].get("colour", "black")


def _mix(colour, other, t: float) -> tuple[int, int, int]:
    return tuple(round(a * (1 - t) + b * t) for a, b in zip(colour, other))


@lru_cache(maxsize=4)
def _grain_tile(size: tuple[int, int]) -> Image.Image:
    """Paper grain to crop from: fixed noise, so a page's seed picks only where to crop."""
    noise = np.random.default_rng(0).integers(0, 14, (size[1] + 256, size[0] + 256), dtype=np.uint8)
    return Image.fromarray(noise)


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(size, 6))


# ---------------------------------------------------------------- wireframe

class _Wireframe:
    """Clean boxes and grey text bars."""

    LINE = (150, 150, 150)
    TEXT = (200, 200, 200)
    TITLE = (120, 120, 120)

    def __init__(self, size):
        self.size = size
        self.image = Image.new("RGB", size, (255, 255, 255))
        self.d = ImageDraw.Draw(self.image)

    def draw(self, boxes: Layout) -> Image.Image:
        self.scale, self.left, _ = placement(boxes, "wireframe", self.size)  # top 0
        for box in boxes.boxes:
            self.box(box)
        return self.image

    def rect(self, box: Box) -> tuple[float, float, float, float]:
        s = self.scale
        return self.left + box.x * s, box.y * s, self.left + (box.x + box.w) * s, (box.y + box.h) * s

    def bars(self, box: Box, colour, thickness: float = 0.45, dy: float = 0.0):
        """One bar per line of text, `thickness` of the line height."""
        x0, y0, _, _ = self.rect(box)
        line_h = box.h * self.scale / max(len(box.lines), 1) if box.token == "text" else 20 * self.scale
        for i, line in enumerate(box.lines):
            top = y0 + dy + i * line_h + line_h * (1 - thickness) / 2
            left = x0 + line.dx * self.scale
            self.d.rectangle((left, top, left + line.width * self.scale, top + line_h * thickness), fill=colour)

    def box(self, box: Box):
        t, d, (x0, y0, x1, y1) = box.token, self.d, self.rect(box)
        s = self.scale
        if t in ("single", "double", "triple", "quadruple"):
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=(247, 247, 247), outline=(190, 190, 190))
        elif t == "nav":
            d.rectangle((x0, y0, x1, y1), fill=(235, 235, 235), outline=self.LINE)
        elif t == "card":
            d.rectangle((x0, y0, x1, y1), fill=(255, 255, 255), outline=self.LINE)
        elif t == "footer":
            d.line((x0, y0, x1, y0), fill=self.LINE)
        elif t in ("big-title", "small-title", "logo", "label"):
            self.bars(box, self.TITLE, 0.6 if t != "label" else 0.45)
            if t == "logo":
                d.ellipse((x0 - 2 - 14 * s, y0 + 4 * s, x0 - 2, y0 + 18 * s), outline=self.TITLE, width=2)
        elif t == "text":
            self.bars(box, self.TEXT)
        elif t == "link":
            self.bars(box, (120, 160, 220))
            d.line((x0, y1 - 2 * s, x1, y1 - 2 * s), fill=(120, 160, 220))
        elif t == "image":
            d.rectangle((x0, y0, x1, y1), fill=(236, 236, 236), outline=self.LINE)
            d.line((x0, y0, x1, y1), fill=self.LINE)
            d.line((x0, y1, x1, y0), fill=self.LINE)
        elif t.startswith("btn-") and t not in ("btn-active", "btn-inactive"):
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=_mix(COLOURS[_colour(t)], (255, 255, 255), 0.2))
            self.bars(box, (255, 255, 255), 0.35, dy=7 * s)
        elif t in ("btn-active", "btn-inactive"):
            fill = (110, 110, 110) if t == "btn-active" else None
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=fill, outline=self.TITLE)
            self.bars(box, (255, 255, 255) if fill else self.TEXT, 0.35, dy=10 * s)
        elif t in ("input", "select", "textarea"):
            d.rectangle((x0, y0, x1, y1), fill=(255, 255, 255), outline=self.LINE)
            self.bars(box, (225, 225, 225), 0.35, dy=7 * s)
            if t == "select":
                cx, cy = x1 - 14 * s, (y0 + y1) / 2
                d.polygon(((cx - 5 * s, cy - 3 * s), (cx + 5 * s, cy - 3 * s), (cx, cy + 4 * s)), fill=self.LINE)
            elif t == "textarea":
                d.line((x1 - 10 * s, y1 - 3 * s, x1 - 3 * s, y1 - 10 * s), fill=self.LINE)
        elif t in ("checkbox", "radio"):
            mark = (x0, y0 + 4 * s, x0 + 13 * s, y0 + 17 * s)
            (d.rectangle if t == "checkbox" else d.ellipse)(mark, outline=self.TITLE, width=max(1, round(1.5 * s)))
            self.bars(box, self.TEXT)


# ---------------------------------------------------------------- pix2code

class _Pix2code(_Wireframe):
    """An imitation of pix2code's Bootstrap screenshots: real (random-letter) text, the grey fade at the bottom.

    Sizes are in CSS pixels, as in the stylesheet; the page is CSS_WIDTH wide, drawn as `placement` says.
    """

    def draw(self, boxes: Layout) -> Image.Image:
        self.scale, self.left, _ = placement(boxes, "pix2code", self.size)  # top 0
        for box in boxes.boxes:
            self.box(box)
        s, x, line = self.scale, self.left, boxes.height - 15  # pix2code's footer follows the content
        self.d.line((x + 15 * s, line * s, x + (boxes.width - 15) * s, line * s), fill=(214, 214, 214))
        text = (0, (line + 20) * s, self.size[0], (boxes.height + PIX2CODE_FOOTER_BELOW) * s)
        self.text_centred(PIX2CODE_FOOTER, text, 15, (51, 51, 51))
        self.shade()
        return self.image

    def shade(self):
        """The grey fade at the bottom edge of pix2code's screenshots."""
        height = round(self.size[1] * 25 / 460)
        ramp = np.linspace(0, 14, height)[:, None, None]
        strip = np.asarray(self.image.crop((0, self.size[1] - height, self.size[0], self.size[1])), dtype=np.float32)
        self.image.paste(Image.fromarray((strip - ramp).clip(0, 255).astype(np.uint8)), (0, self.size[1] - height))

    def text(self, box: Box, size: float, colour, dy: float = 0.0):
        x0, y0, _, _ = self.rect(box)
        line_h = 20 * self.scale if box.token != "big-title" else 33 * self.scale
        for i, line in enumerate(box.lines):
            font = _font(round(size * self.scale))
            room = (box.w - line.dx) * self.scale
            if font.getlength(line.text) > room:  # the layout's width estimate was short: squeeze, as wrapping would
                font = _font(int(size * self.scale * room / font.getlength(line.text)))
            self.d.text((x0 + line.dx * self.scale, y0 + dy + (i + 0.5) * line_h), line.text, font=font, fill=colour, anchor="lm")

    def text_centred(self, text: str, rect, size: float, colour):
        self.d.text(((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2), text, font=_font(round(size * self.scale)), fill=colour,
                    anchor="mm")

    def box(self, box: Box):
        t, d, (x0, y0, x1, y1) = box.token, self.d, self.rect(box)
        s = self.scale
        if t in ("single", "double", "triple", "quadruple"):
            d.rounded_rectangle((x0, y0, x1, y1), radius=6 * s, fill=(245, 245, 245))
        elif t in ("btn-active", "btn-inactive"):
            active = t == "btn-active"
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=COLOURS["blue"] if active else COLOURS["black"])
            self.text_centred(box.lines[0].text, (x0, y0, x1, y1), 15, (255, 255, 255) if active else COLOURS["blue"])
        elif t.startswith("btn-"):
            colour = _colour(t)
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=COLOURS[colour], outline=BORDERS[colour])
            self.text_centred(box.lines[0].text, (x0, y0, x1, y1), 15, (255, 255, 255))
        elif t == "nav":
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=(34, 34, 34))
        elif t == "logo":
            self.text(box, 20, (255, 255, 255), dy=4 * s)
        elif t == "link":
            self.text(box, 15, (221, 221, 221) if box.parent == "nav" else COLOURS["blue"])
        elif t in ("big-title", "small-title"):
            self.text(box, 30 if t == "big-title" else 19.5, (51, 51, 51))
        elif t in ("text", "label"):
            self.text(box, 15, (51, 51, 51))
        elif t == "card":
            d.rounded_rectangle((x0, y0, x1, y1), radius=6 * s, fill=(255, 255, 255), outline=(221, 221, 221))
        elif t == "footer":
            d.line((x0, y0, x1, y0), fill=(187, 187, 187))
        elif t == "image":
            super().box(box)
        elif t in ("input", "select", "textarea"):
            d.rounded_rectangle((x0, y0, x1, y1), radius=4 * s, fill=(255, 255, 255), outline=(204, 204, 204))
            self.text(box, 15, (150, 150, 150), dy=7 * s)
            if t == "select":
                cx, cy = x1 - 12 * s, (y0 + y1) / 2
                d.polygon(((cx - 4 * s, cy - 2 * s), (cx + 4 * s, cy - 2 * s), (cx, cy + 3 * s)), fill=(80, 80, 80))
        elif t in ("checkbox", "radio"):
            mark = (x0, y0 + 4 * s, x0 + 13 * s, y0 + 17 * s)
            (d.rectangle if t == "checkbox" else d.ellipse)(mark, outline=(118, 118, 118), fill=(255, 255, 255))
            self.text(box, 15, (51, 51, 51))


# ---------------------------------------------------------------- sketch

class _Sketch:
    """A hand drawing on paper: wobbly strokes, handwriting-like scribbles, a photo's tilt and grain.

    The tilt is applied to every coordinate as it is drawn, which is much cheaper than rotating
    the finished picture.
    """

    def __init__(self, size, rng: random.Random):
        self.size, self.rng = size, rng
        self.paper = rng.choice(PAPERS)
        self.pen = rng.choice(PENS)
        self.width = rng.choice((1, 2, 2, 3))
        self.wobble = rng.uniform(0.6, 2.0)  # how shaky the hand is, in pixels
        self.writing = rng.choice(("cursive", "cursive", "zigzag", "wave"))
        self.picture = rng.choice(("cross", "mountain"))
        angle = math.radians(rng.uniform(-2.5, 2.5))  # the photo is not quite square to the paper
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.image = Image.new("RGB", size, self.paper)
        self.d = ImageDraw.Draw(self.image)

    def draw(self, boxes: Layout) -> Image.Image:
        self.ruling()
        self.scale, self.left, self.top = placement(boxes, "sketch", self.size)
        for box in boxes.boxes:
            self.box(box)
        return self.grain()

    # -- paper
    def ruling(self):
        kind = self.rng.choice(("plain", "plain", "lined", "grid"))
        if kind == "plain":
            return
        colour = _mix(self.paper, (120, 150, 210), 0.25)
        step, (w, h) = self.rng.randint(18, 30), self.size
        for y in range(-h // 4, h + h // 4, step):  # past the edges, so the tilt leaves no gap
            self.stroke([(-w // 4, y), (w + w // 4, y)], colour, 1)
        if kind == "grid":
            for x in range(-w // 4, w + w // 4, step):
                self.stroke([(x, -h // 4), (x, h + h // 4)], colour, 1)

    def grain(self) -> Image.Image:
        """Paper grain and uneven light, as in a photo or scan of a drawing."""
        w, h = self.size
        tile = _grain_tile(self.size)
        x, y = self.rng.randrange(tile.width - w + 1), self.rng.randrange(tile.height - h + 1)
        corners = Image.new("L", (2, 2))
        corners.putdata([self.rng.randrange(24) for _ in range(4)])  # how much darker each corner is
        shade = ImageChops.add(tile.crop((x, y, x + w, y + h)), corners.resize((w, h), Image.BILINEAR))
        return ImageChops.subtract(self.image, Image.merge("RGB", (shade, shade, shade)))

    # -- strokes
    def stroke(self, points, fill, width: int):
        """Draw a polyline through the tilt."""
        cx, cy, c, s = self.size[0] / 2, self.size[1] / 2, self.cos, self.sin
        self.d.line([(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points],
                    fill=fill, width=width)

    def patch(self, points, fill):
        cx, cy, c, s = self.size[0] / 2, self.size[1] / 2, self.cos, self.sin
        self.d.polygon([(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points], fill=fill)

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return self.left + x * self.scale, self.top + y * self.scale

    def line(self, x0, y0, x1, y1, *, fill=None, width=None):
        """A shaky straight stroke, overshooting its ends a little."""
        rng, length = self.rng, math.hypot(x1 - x0, y1 - y0)
        if length < 1:
            return
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        start, end = -rng.uniform(0, 3), length + rng.uniform(0, 4)
        steps = max(2, int(length / 28))
        drift, points = 0.0, []
        for i in range(steps + 1):
            t = start + (end - start) * i / steps
            drift = drift * 0.6 + rng.gauss(0, self.wobble)
            points.append((x0 + ux * t - uy * drift, y0 + uy * t + ux * drift))
        self.stroke(points, fill or self.pen, width or self.width)

    def rect(self, x0, y0, x1, y1, **pen):
        self.line(x0, y0, x1, y0, **pen)
        self.line(x1, y0, x1, y1, **pen)
        self.line(x1, y1, x0, y1, **pen)
        self.line(x0, y1, x0, y0, **pen)

    def ellipse(self, cx, cy, rx, ry, *, width=None):
        rng, n = self.rng, 14
        phase, overlap = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.5)
        points = [(cx + rx * math.cos(a) * (1 + rng.gauss(0, 0.05)), cy + ry * math.sin(a) * (1 + rng.gauss(0, 0.05)))
                  for a in (phase + (2 * math.pi + overlap) * i / n for i in range(n + 1))]
        self.stroke(points, self.pen, width or self.width)

    def shade(self, x0, y0, x1, y1, colour):
        """A marker's fill: a tinted patch and a few diagonal strokes, not quite inside the lines."""
        u = self.rng.uniform
        self.patch([(x0 + u(-2, 2), y0 + u(-2, 2)), (x1 + u(-2, 2), y0 + u(-2, 2)),
                    (x1 + u(-2, 2), y1 + u(-2, 2)), (x0 + u(-2, 2), y1 + u(-2, 2))], _mix(colour, self.paper, 0.55))
        height, hatch = y1 - y0, _mix(colour, self.paper, 0.3)
        x = x0 - height
        while x < x1:
            a, b = max(x, x0), min(x + height, x1)
            if b > a:
                self.stroke([(a, y1 - (a - x)), (b, y1 - (b - x))], hatch, 2)
            x += max(5.0, height / 2)

    def write(self, x: float, y: float, line, font: float, *, weight: int | None = None):
        """Handwriting-like strokes over a line of text: loops, a zigzag or a wave per word."""
        rng, s = self.rng, self.scale
        x_height = font * s * rng.uniform(0.45, 0.6)
        base = y + 20 * s * 0.5 + x_height / 2
        advance = font * s * 0.47
        cursor = x + line.dx * s
        for word in line.text.split():
            letters = len(word)
            if self.writing == "cursive":  # a prolate cycloid: a loop per letter, some letters tall
                a = advance / (2 * math.pi)
                b = a * rng.uniform(1.2, 1.7)
                thetas = np.linspace(0, 2 * math.pi * letters, 5 * letters + 1)
                heights = np.array([rng.choice((1.0, 1.0, 1.0, 1.8)) for _ in word])
                tall = heights[np.minimum(np.arange(5 * letters + 1) // 5, letters - 1)]
                xs = cursor + a * thetas - b * np.sin(thetas)
                ys = base - x_height * tall * (0.5 - 0.5 * np.cos(thetas))
            elif self.writing == "zigzag":
                n = max(2, int(letters * 1.5))
                xs = cursor + np.linspace(0, letters * advance, n + 1)
                ys = base - x_height * (np.arange(n + 1) % 2)
            else:
                xs = cursor + np.linspace(0, letters * advance, max(3, letters))
                ys = base - x_height / 2 + np.sin(xs / (advance * 1.3) + rng.uniform(0, 6)) * x_height * 0.3
            ys = ys + np.linspace(0, rng.gauss(0, 0.15) * x_height, len(xs))  # the hand drifts off the line
            self.stroke(zip(xs.tolist(), ys.tolist()), self.pen, weight or max(1, self.width - 1))
            cursor += letters * advance + advance * rng.uniform(0.9, 1.6)

    def box(self, box: Box):
        t, s = box.token, self.scale
        x0, y0 = self.xy(box.x, box.y)
        x1, y1 = self.xy(box.x + box.w, box.y + box.h)
        jitter = self.rng.uniform(-1.5, 1.5)
        x0, x1 = x0 + jitter, x1 + jitter
        font = BLOCKS.get(t, (0, 0, 0, 14))[3]
        if t in ("single", "double", "triple", "quadruple", "card"):
            self.rect(x0 + 2, y0 + 2, x1 - 2, y1 - 2, width=max(1, self.width - (t != "card")))
        elif t == "nav":
            self.rect(x0, y0, x1, y1)
        elif t == "footer":
            self.line(x0, y0, x1, y0)
        elif t in ("btn-active", "btn-inactive"):
            if t == "btn-active":
                self.shade(x0, y0, x1, y1, COLOURS["blue"])
            self.rect(x0, y0, x1, y1)
            self.write(x0, y0 + 10 * s, box.lines[0], 14)
        elif t.startswith("btn-"):
            self.shade(x0, y0, x1, y1, COLOURS[_colour(t)])
            self.rect(x0, y0, x1, y1)
            self.write(x0, y0 + 7 * s, box.lines[0], 14)
        elif t == "logo":
            r = 10 * s
            self.ellipse(x0 - r - 4, (y0 + y1) / 2, r, r, width=self.width + 1)
            self.write(x0, y0 + 4 * s, box.lines[0], 20, weight=self.width + 1)
        elif t in ("big-title", "small-title"):
            self.write(x0, y0 + (6 * s if t == "big-title" else 0), box.lines[0], font, weight=self.width + 1)
        elif t in ("text", "label"):
            for i, line in enumerate(box.lines):
                self.write(x0, y0 + i * 20 * s, line, 14, weight=self.width + (t == "label") - 1 or 1)
        elif t == "link":
            self.write(x0, y0, box.lines[0], 14)
            self.line(x0 + box.lines[0].dx * s, y1 - 2 * s, x0 + (box.lines[0].dx + box.lines[0].width) * s, y1 - 2 * s)
        elif t == "image":
            self.rect(x0, y0, x1, y1)
            if self.picture == "cross":
                self.line(x0, y0, x1, y1)
                self.line(x0, y1, x1, y0)
            else:  # mountains and a sun
                w, h = x1 - x0, y1 - y0
                peaks = [(x0, y1), (x0 + w * 0.3, y0 + h * 0.45), (x0 + w * 0.5, y0 + h * 0.7),
                         (x0 + w * 0.72, y0 + h * 0.3), (x1, y1)]
                for a, b in zip(peaks, peaks[1:]):
                    self.line(*a, *b)
                self.ellipse(x0 + w * 0.2, y0 + h * 0.25, h * 0.1, h * 0.1)
        elif t in ("input", "select", "textarea"):
            self.rect(x0, y0, x1, y1)
            if t == "select":
                cx, cy = x1 - 12 * s, (y0 + y1) / 2
                self.line(cx - 5 * s, cy - 3 * s, cx, cy + 3 * s)
                self.line(cx, cy + 3 * s, cx + 5 * s, cy - 3 * s)
            elif t == "textarea":
                self.line(x1 - 12 * s, y1 - 3 * s, x1 - 3 * s, y1 - 12 * s, width=1)
                self.line(x1 - 7 * s, y1 - 3 * s, x1 - 3 * s, y1 - 7 * s, width=1)
        elif t in ("checkbox", "radio"):
            size = 13 * s
            if t == "checkbox":
                self.rect(x0, y0 + 4 * s, x0 + size, y0 + 4 * s + size)
            else:
                self.ellipse(x0 + size / 2, y0 + 4 * s + size / 2, size / 2, size / 2)
            self.write(x0, y0, box.lines[0], 14)
