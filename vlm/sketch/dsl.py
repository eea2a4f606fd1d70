"""The page DSL: pix2code's GUI syntax over a larger vocabulary.

A page is a tree of tokens written `token { child, child }`. Every pix2code .gui file is a
page-DSL document; the extra tokens cover hand-drawn UI vocabularies (forms, cards, images,
links, ...). Which tokens exist, which are containers and what they may hold is data, in
vocabulary.json beside this file. Text is not part of the DSL: compilers fill it in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VOCABULARY = json.loads(Path(__file__).with_name("vocabulary.json").read_text())
TOKENS: dict[str, dict] = VOCABULARY["tokens"]
ROOT = "page"  # the implicit root: a document is the list of its children

PIX2CODE_TOKENS = frozenset({
    "header", "btn-active", "btn-inactive", "row", "single", "double", "quadruple",
    "btn-green", "btn-orange", "btn-red", "big-title", "small-title", "text",
})


WORDS = (*sorted(set(TOKENS) - {ROOT}), "{", "}", ",")  # all a document is written in (decoding keeps to them)


def is_container(token: str) -> bool:
    return bool(TOKENS[token].get("children"))


@dataclass(frozen=True)
class Node:
    token: str
    children: tuple[Node, ...] = ()

    def walk(self) -> Iterator[Node]:
        """Pre-order: a node before its children, children in reading order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __len__(self) -> int:
        """Number of elements, the root not counted."""
        return sum(1 for _ in self.walk()) - 1


_LEXEME = re.compile(r"[{},]|[^\s{},]+")


def parse_dsl(text: str) -> Node:
    """Parse a page-DSL document (any whitespace; commas between siblings optional) to a tree.

    Raises ValueError naming the offending token and its line for unknown tokens, children a
    container does not allow, unbalanced braces and misplaced commas.
    """
    lexemes = [(m.group(), text.count("\n", 0, m.start()) + 1) for m in _LEXEME.finditer(text)]
    stack: list[tuple[str, list[Node]]] = [(ROOT, [])]
    after_item = False  # a comma is only valid between two items
    i = 0
    while i < len(lexemes):
        lex, line = lexemes[i]
        following = lexemes[i + 1][0] if i + 1 < len(lexemes) else None
        i += 1
        if lex == "}":
            if len(stack) == 1:
                raise ValueError(f"line {line}: '}}' closes nothing")
            token, children = stack.pop()
            stack[-1][1].append(Node(token, tuple(children)))
            after_item = True
        elif lex == ",":
            if not after_item or following in (None, "}", ","):
                raise ValueError(f"line {line}: ',' must stand between two elements")
            after_item = False
        elif lex == "{":
            raise ValueError(f"line {line}: '{{' must follow a container token")
        else:
            parent = stack[-1][0]
            if lex not in TOKENS or lex == ROOT:
                raise ValueError(f"line {line}: unknown token {lex!r}")
            if lex not in TOKENS[parent]["children"]:
                raise ValueError(f"line {line}: {lex!r} is not allowed inside {parent!r}")
            if is_container(lex):
                if following != "{":
                    raise ValueError(f"line {line}: container {lex!r} must be followed by '{{'")
                stack.append((lex, []))
                after_item = False
                i += 1  # the '{' just checked
            elif following == "{":
                raise ValueError(f"line {line}: {lex!r} is an element and cannot hold children")
            else:
                stack[-1][1].append(Node(lex))
                after_item = True
    if len(stack) > 1:
        raise ValueError(f"unclosed {stack[-1][0]!r}: missing '}}'")
    return Node(ROOT, tuple(stack[0][1]))


def _runs(nodes: tuple[Node, ...]) -> Iterator[list[str] | Node]:
    """Group siblings as pix2code writes them: runs of leaves on one line, containers alone."""
    leaves: list[str] = []
    for node in nodes:
        if is_container(node.token):
            if leaves:
                yield leaves
                leaves = []
            yield node
        else:
            leaves.append(node.token)
    if leaves:
        yield leaves


def _lines(nodes, comma: str):
    """Opening lines, leaf runs joined by `comma`, and closing braces, in document order."""
    for run in _runs(nodes):
        if isinstance(run, Node):
            yield f"{run.token} {{"
            yield from _lines(run.children, comma)
            yield "}"
        else:
            yield comma.join(run)


def to_dsl(tree: Node) -> str:
    """The canonical one-line form, the training target: `header { btn-active , btn-inactive } row { ... }`."""
    return " ".join(_lines(tree.children, " , "))


def to_gui(tree: Node) -> str:
    """pix2code's multi-line layout, byte for byte as in its .gui files."""
    return "\n".join(_lines(tree.children, ", ")) + "\n"


def dsl_tokens(tree: Node) -> list[str]:
    """The canonical form split into tokens (braces and commas included), for token accuracy."""
    return to_dsl(tree).split()
