"""Page DSL <-> HTML, both ways driven by a mapping table in pix2code's format.

A mapping maps each token to an HTML template: `{}` is where the children go, `[]` where the
text goes, and "body" wraps the whole page. Two ship: pix2code's own web-dsl-mapping.json
(Bootstrap markup, read from the data folder) and page-dsl-mapping.json beside this file
(semantic HTML with self-contained CSS, the full vocabulary).

The inverse recognises an element by the tag and classes of a template's outermost element
(the most specific template whose classes the element has wins) and finds the children of a
container where its template puts `{}`. Elements no template describes are looked through,
so wrappers a model adds around known elements do not hide them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from pathlib import Path

from .dsl import ROOT, TOKENS, VOCABULARY, Node, is_container

SLOT_TAG = "vlm-slot"  # stands for `{}` while a template is parsed
MAX_DEPTH = 256  # deeper markup is flattened, so hostile input cannot exhaust the stack
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


@dataclass
class Element:
    tag: str
    classes: frozenset[str] = frozenset()
    children: list[Element] = field(default_factory=list)

    def has_slot(self) -> bool:
        return self.tag == SLOT_TAG or any(c.has_slot() for c in self.children)


class _DomBuilder(HTMLParser):
    """Elements only (text is not part of the page DSL); forgiving about unclosed tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, frozenset((dict(attrs).get("class") or "").split()))
        self.stack[-1].children.append(element)
        if tag not in VOID_TAGS and len(self.stack) < MAX_DEPTH:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, frozenset((dict(attrs).get("class") or "").split())))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):  # close up to the matching open tag
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return  # a stray end tag closes nothing


def _descendants(element: Element):
    for child in element.children:
        yield child
        yield from _descendants(child)


def parse_dom(html: str) -> Element:
    builder = _DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


@dataclass
class Mapping:
    """A token -> HTML template table, and the element signatures its inverse recognises."""
    name: str
    templates: dict[str, str]  # token -> template; ROOT -> the "body" template

    def __post_init__(self):
        self.dom = {t: parse_dom(tpl.replace("{}", f"<{SLOT_TAG}></{SLOT_TAG}>")) for t, tpl in self.templates.items()}
        self.signatures: dict[str, list[tuple[frozenset[str], str]]] = {}
        seen = {}
        for token, dom in self.dom.items():
            if token == ROOT:
                continue
            if not dom.children:
                raise ValueError(f"mapping {self.name!r}: template of {token!r} has no element")
            outer = dom.children[0]
            key = (outer.tag, outer.classes)
            if key in seen:
                raise ValueError(f"mapping {self.name!r}: {token!r} and {seen[key]!r} have the same signature {key}")
            seen[key] = token
            self.signatures.setdefault(outer.tag, []).append((outer.classes, token))
        for candidates in self.signatures.values():  # most specific first
            candidates.sort(key=lambda c: (-len(c[0]), sorted(c[0])))
        for token, dom in self.dom.items():  # else the inverse would see elements that are not there
            for inner in _descendants(dom.children[0]) if token != ROOT else ():
                if self.match(inner):
                    raise ValueError(f"mapping {self.name!r}: inside {token!r}, <{inner.tag}> looks like {self.match(inner)!r}")

    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        """A mapping file in pix2code's format (web-dsl-mapping.json)."""
        data = json.loads(Path(path).read_text())
        if (data.get("opening-tag"), data.get("closing-tag")) != ("{", "}"):
            raise ValueError(f"{path}: only '{{' '}}' containers are supported")
        if "body" not in data:
            raise ValueError(f"{path}: no 'body' template for the page")
        templates = {k: v for k, v in data.items() if k not in ("opening-tag", "closing-tag", "body")}
        unknown = sorted(set(templates) - set(TOKENS))
        if unknown:
            raise ValueError(f"{path}: tokens not in the page DSL: {unknown}")
        return cls(Path(path).stem, {ROOT: data["body"], **templates})

    def template(self, token: str) -> str:
        if token not in self.templates:
            raise ValueError(f"mapping {self.name!r} has no template for {token!r}")
        return self.templates[token]

    def match(self, element: Element) -> str | None:
        for classes, token in self.signatures.get(element.tag, ()):
            if classes <= element.classes:
                return token
        return None


PAGE_MAPPING = Mapping.load(Path(__file__).with_name("page-dsl-mapping.json"))


# ---------------------------------------------------------------- text

def _text(kind: str, rng: random.Random, *, letters: bool) -> str:
    spec = VOCABULARY["text_kinds"][kind]
    if letters:  # pix2code's filler: random lowercase letters with a few spaces
        length, spaces = spec["letters"]
        chars = [rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length)]
        for pos in rng.sample(range(2, length - 2), spaces):
            chars[pos] = " "
        words = "".join(chars).split()
    else:
        words = [rng.choice(VOCABULARY["lorem"]) for _ in range(rng.randint(*spec["words"]))]
    if spec["capitalise"]:
        return " ".join(w.capitalize() for w in words)
    return " ".join(words) if letters else " ".join(words).capitalize() + "."


def text_nodes(tree: Node) -> list[Node]:
    """The nodes that show text, in the order their texts are stored."""
    return [n for n in tree.walk() if "text" in TOKENS[n.token]]


def fill_texts(tree: Node, rng: random.Random, *, letters: bool = False) -> list[str]:
    """One text per text-showing node: lorem words, or pix2code-like random letters."""
    return [_text(TOKENS[n.token]["text"], rng, letters=letters) for n in text_nodes(tree)]


# ---------------------------------------------------------------- compile

def compile_html(tree: Node, *, mapping: Mapping = PAGE_MAPPING, texts: list[str] | None = None,
                 seed: int = 0, letters: bool = False) -> str:
    """The HTML of a page tree: each template with `{}` replaced by its children's HTML.

    Texts come from `texts` (as fill_texts makes them) or are drawn from `seed`, so DSL -> HTML
    is a function.
    """
    if texts is None:
        texts = fill_texts(tree, random.Random(seed), letters=letters)
    if len(texts) != len(text_nodes(tree)):
        raise ValueError(f"{len(texts)} texts for {len(text_nodes(tree))} text elements")
    remaining = iter(texts)

    def render(node: Node) -> str:
        html = mapping.template(node.token)
        if "text" in TOKENS[node.token]:
            html = html.replace("[]", escape(next(remaining)))
        return html.replace("{}", "".join(render(child) for child in node.children))

    return render(tree)


# ---------------------------------------------------------------- inverse

def _slot_content(template: Element, element: Element) -> list[Element]:
    """The children of `element` that stand where `template` (which it matched) has `{}`."""
    if any(c.tag == SLOT_TAG for c in template.children):
        chrome = {(c.tag, c.classes) for c in template.children if c.tag != SLOT_TAG}  # e.g. pix2code's footer
        return [c for c in element.children if (c.tag, c.classes) not in chrome]
    step = next(c for c in template.children if c.has_slot())
    for child in element.children:
        if child.tag == step.tag and step.classes <= child.classes:
            return _slot_content(step, child)
    return element.children  # the markup strays from the template: look at all of it


def _nodes(elements: list[Element], mapping: Mapping) -> list[Node]:
    nodes = []
    for element in elements:
        token = mapping.match(element)
        if token is None:
            nodes.extend(_nodes(element.children, mapping))
        elif is_container(token):
            content = _slot_content(mapping.dom[token].children[0], element)
            nodes.append(Node(token, tuple(_nodes(content, mapping))))
        else:  # what a leaf holds is looked at too: unclosed tags (<p>a<p>b) nest what they should not
            nodes.append(Node(token))
            nodes.extend(_nodes(element.children, mapping))
    return nodes


def html_to_tree(html: str, *, mapping: Mapping | list[Mapping] = PAGE_MAPPING) -> Node:
    """The page tree of an HTML document or fragment; never raises on bad markup.

    With several mappings, the one that recognises the most elements wins (ties: the first).
    The tree is not checked against the grammar: a model's HTML may nest things oddly.
    """
    try:
        dom = parse_dom(html)
    except Exception:  # html.parser raises on a few malformed declarations; such output has no page
        return Node(ROOT)
    best = Node(ROOT)
    for m in [mapping] if isinstance(mapping, Mapping) else mapping:
        tree = Node(ROOT, tuple(_nodes(_slot_content(m.dom[ROOT], dom), m)))
        if len(tree) > len(best):
            best = tree
    return best
