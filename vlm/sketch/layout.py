"""Box geometry of a page, in CSS pixels, following the CSS of page-dsl-mapping.json.

The flow: a header or navigation bar, rows split into equal columns (wrapping like flexbox),
elements stacked in a column with collapsing margins, runs of buttons and links set side by
side, a footer. The numbers are those of the stylesheet, so a PIL drawing of the boxes lines
up with the browser's rendering of the HTML, without a browser. Text widths are estimated
from a mean character width, which is close enough to wrap lines plausibly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .dsl import TOKENS, Node

# token: (height, margin-top, margin-bottom, font size); a text's height is per line
BLOCKS = {
    "big-title": (33, 20, 10, 30), "small-title": (20, 10, 10, 18), "text": (20, 0, 10, 14),
    "image": (120, 0, 10, 14), "label": (20, 0, 5, 14), "input": (34, 0, 10, 14),
    "select": (34, 0, 10, 14), "textarea": (74, 0, 10, 14), "checkbox": (20, 0, 5, 14),
    "radio": (20, 0, 5, 14), "card": (0, 0, 10, 14), "form": (0, 0, 10, 14),
}
# set side by side in a line: (height, horizontal padding + border); the logo only in a nav bar
INLINE = {"link": (20, 0), **{t: (34, 26) for t in ("btn-green", "btn-orange", "btn-red", "btn-blue", "btn-grey")}}
LOGO = (28, 20)  # line height, font size
INLINE_GAP = 10  # margin right and below
BOX_PADDING = {"single": 20, "double": 20, "triple": 20, "quadruple": 20, "card": 16, "form": 0}
CHAR_WIDTH = 0.47  # mean advance of a character, in font sizes
PAGE_PADDING, MAX_WIDTH = 15, 1200
PILL = (40, 15, 10)  # height, horizontal padding, gap
NAV = (54, 10, 20, 20, 10)  # min height, vertical and horizontal padding, gaps across and down
BAR_MARGIN = COLUMN_GAP = COLUMN_MARGIN = 20
CHECK_SIZE = 13  # the box or circle before a checkbox's or radio's text
FOOTER_PADDING = 20  # below a 1 px top border


@dataclass(frozen=True)
class Line:
    dx: float  # from the box's left edge
    width: float
    text: str


@dataclass(frozen=True)
class Box:
    token: str
    x: float
    y: float
    w: float
    h: float
    parent: str  # the token of the container it is in
    lines: tuple[Line, ...] = ()  # the text, wrapped, where the box shows text


@dataclass(frozen=True)
class Layout:
    boxes: list[Box]  # pre-order: a container before what it holds
    width: float
    height: float


def text_width(text: str, font: float) -> float:
    return len(text) * font * CHAR_WIDTH


def wrap(text: str, width: float, font: float, *, centre: bool = False) -> tuple[Line, ...]:
    """Greedy word wrap; a word wider than the box gets a line of its own, clipped."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and text_width(candidate, font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    widths = [min(text_width(t, font), width) for t in lines]
    return tuple(Line((width - w) / 2 if centre else 0.0, w, t) for t, w in zip(lines, widths))


def layout(tree: Node, texts: list[str], *, width: float = 1200) -> Layout:
    """Place every element of `tree` in a page `width` CSS pixels wide; `texts` as fill_texts gives."""
    return _Flow(texts).page(tree, width)


class _Flow:
    def __init__(self, texts: list[str]):
        self.texts: Iterator[str] = iter(texts)
        self.boxes: list[Box] = []

    def text(self, node: Node) -> str:
        return next(self.texts) if "text" in TOKENS[node.token] else ""

    def reserve(self) -> int:
        """A slot for a container's box, known only once its content is placed."""
        self.boxes.append(None)
        return len(self.boxes) - 1

    def page(self, tree: Node, width: float) -> Layout:
        inner = min(width, MAX_WIDTH) - 2 * PAGE_PADDING
        x = (width - inner) / 2
        y = PAGE_PADDING
        for part in tree.children:
            place = {"header": self.header, "nav": self.nav, "row": self.row, "footer": self.footer}[part.token]
            y = place(part, x, y, inner)
        return Layout(self.boxes, width, y + PAGE_PADDING)

    def header(self, node: Node, x: float, y: float, w: float) -> float:
        slot = self.reserve()
        height, pad, gap = PILL
        cx, cy = x, y
        for pill in node.children:
            lines = wrap(self.text(pill), w, 14)
            pw = min(lines[0].width + 2 * pad, w)
            if cx > x and cx + pw > x + w:
                cx, cy = x, cy + height + gap
            self.boxes.append(Box(pill.token, cx, cy, pw, height, node.token, (Line(pad, pw - 2 * pad, lines[0].text),)))
            cx += pw + gap
        bottom = cy + height if node.children else y
        self.boxes[slot] = Box(node.token, x, y, w, bottom - y, "page")
        return bottom + BAR_MARGIN

    def nav(self, node: Node, x: float, y: float, w: float) -> float:
        slot = self.reserve()
        min_h, pad_y, pad_x, gap_x, gap_y = NAV
        items = []
        for item in node.children:
            text = self.text(item)
            (h, font), extra = (LOGO, 0) if item.token == "logo" else ((INLINE[item.token][0], 14), INLINE[item.token][1])
            iw = min(text_width(text, font) + extra, w - 2 * pad_x)
            items.append((item.token, iw, h, Line(extra / 2, iw - extra, text)))
        lines = _lines(items, w - 2 * pad_x, gap_x)  # the bar wraps like a flex container
        heights = [max(i[2] for i in line) for line in lines]
        content_h = sum(heights) + gap_y * (len(lines) - 1)
        bar_h = max(min_h, content_h + 2 * pad_y)
        cy = y + (bar_h - content_h) / 2
        for line, line_h in zip(lines, heights):
            cx = x + pad_x
            for token, iw, ih, text_line in line:
                self.boxes.append(Box(token, cx, cy + (line_h - ih) / 2, iw, ih, node.token, (text_line,)))
                cx += iw + gap_x
            cy += line_h + gap_y
        self.boxes[slot] = Box(node.token, x, y, w, bar_h, "page")
        return y + bar_h + BAR_MARGIN

    def row(self, node: Node, x: float, y: float, w: float) -> float:
        slot = self.reserve()
        cx, line_top, line_bottom = x, y, y
        for column in node.children:
            per_row = TOKENS[column.token]["per_row"]
            cw = (w - COLUMN_GAP * (per_row - 1)) / per_row
            if cx > x and cx + cw > x + w + 0.5:
                cx, line_top = x, line_bottom
            bottom = self.container(column, cx, line_top, cw, node.token)
            line_bottom = max(line_bottom, bottom + COLUMN_MARGIN)
            cx += cw + COLUMN_GAP
        self.boxes[slot] = Box(node.token, x, y, w, line_bottom - y, "page")
        return line_bottom

    def footer(self, node: Node, x: float, y: float, w: float) -> float:
        slot = self.reserve()
        bottom = self.stack(node.children, x, y + 1 + FOOTER_PADDING, w, node.token, centre=True)
        self.boxes[slot] = Box(node.token, x, y, w, bottom + FOOTER_PADDING - y, "page")
        return bottom + FOOTER_PADDING

    def container(self, node: Node, x: float, y: float, w: float, parent: str) -> float:
        """A column, card or form: padding around stacked content; returns its bottom edge."""
        slot = self.reserve()
        pad = BOX_PADDING[node.token]
        bottom = self.stack(node.children, x + pad, y + pad, w - 2 * pad, node.token) + pad
        self.boxes[slot] = Box(node.token, x, y, w, bottom - y, parent)
        return bottom

    def stack(self, nodes: tuple[Node, ...], x: float, y: float, w: float, parent: str, centre: bool = False) -> float:
        """Blocks one under the other (margins collapse), inline runs side by side.

        As in the stylesheet, the last child has no bottom margin. Returns the content's bottom.
        """
        cursor, margin = y, None  # margin: the bottom margin pending above, None at the top
        i = 0
        while i < len(nodes):
            if nodes[i].token in INLINE:
                j = i
                while j < len(nodes) and nodes[j].token in INLINE:
                    j += 1
                cursor = self.inline(nodes[i:j], x, cursor + (margin or 0), w, parent, centre, last=j == len(nodes))
                margin, i = 0, j
                continue
            node = nodes[i]
            height, top, bottom, font = BLOCKS[node.token]
            cursor += top if margin is None else max(margin, top)
            if node.token in BOX_PADDING:
                cursor = self.container(node, x, cursor, w, parent)
            else:
                cursor = self.element(node, x, cursor, w, parent, height, font, centre)
            margin = 0 if i == len(nodes) - 1 else bottom
            i += 1
        return cursor

    def element(self, node: Node, x, y, w, parent, height, font, centre) -> float:
        text = self.text(node)
        if node.token == "text":
            lines = wrap(text, w, font, centre=centre)
            height *= len(lines)
        elif node.token in ("checkbox", "radio"):
            first = wrap(text, w - CHECK_SIZE - 6, font)[0]
            lines = (Line(CHECK_SIZE + 6, first.width, first.text),)
        elif node.token in ("input", "select", "textarea"):
            first = wrap(text, w - 40, font)[0]  # the placeholder, inside the padding
            lines = (Line(12, first.width, first.text),)
        elif node.token == "image":
            lines = ()  # its text is the alt text, not shown
        else:
            lines = wrap(text, w, font, centre=centre)[:1]
        self.boxes.append(Box(node.token, x, y, w, height, parent, lines))
        return y + height

    def inline(self, nodes, x, y, w, parent, centre, last) -> float:
        """A run of buttons and links, wrapped into lines; returns the bottom of the last line."""
        items = []
        for k, node in enumerate(nodes):
            height, extra = INLINE[node.token]
            text = self.text(node)
            iw = min(text_width(text, 14) + extra, w)
            below = 0 if last and k == len(nodes) - 1 else INLINE_GAP  # the last child has no margin
            items.append((node.token, iw, height + below, Line(extra / 2, iw - extra, text)))
        cursor = y
        for line in _lines(items, w, INLINE_GAP):
            used = sum(i[1] for i in line) + INLINE_GAP * (len(line) - 1)
            cx = x + ((w - used) / 2 if centre else 0)
            for token, iw, _, text_line in line:
                self.boxes.append(Box(token, cx, cursor, iw, INLINE[token][0], parent, (text_line,)))
                cx += iw + INLINE_GAP
            cursor += max(i[2] for i in line)
        return cursor


def _lines(items: list[tuple], width: float, gap: float) -> list[list[tuple]]:
    """Break (token, width, ...) items into lines no wider than `width`."""
    lines, line, used = [], [], 0.0
    for item in items:
        if line and used + gap + item[1] > width:
            lines.append(line)
            line, used = [], 0.0
        used += (gap if line else 0) + item[1]
        line.append(item)
    return lines + [line]
