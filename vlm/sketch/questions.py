"""Captions and question-answer pairs about a page, read off its tree, to teach chat about sketches."""

from __future__ import annotations

import random
from collections import Counter

from vlm.prompts import IMAGE_TOKEN

from .dsl import TOKENS, Node
from .generate import Page

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
COUNTED = ("button", "navigation button", "link", "image", "heading", "paragraph", "text box", "dropdown",
           "text area", "checkbox", "radio button", "label", "card", "form", "row", "column")
PRESENT = ("navigation bar", "header", "footer", "form", "card", "image", "checkbox", "radio button",
           "dropdown", "text area", "link")
FIELDS = ("input", "select", "textarea", "checkbox", "radio")


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def plural(name: str, count: int = 2) -> str:
    if count == 1:
        return name
    return name + ("es" if name.endswith(("x", "s")) else "s")


def _names(tree: Node) -> Counter:
    return Counter(TOKENS[n.token]["name"] for n in tree.walk() if n is not tree)


def _buttons(tree: Node) -> list[Node]:
    """The coloured action buttons in reading order."""
    return [n for n in tree.walk() if TOKENS[n.token].get("name") == "button"]


def describe(page: Page) -> str:
    """One sentence: 'A page with a navigation bar, 2 rows and a form with 3 fields.'"""
    tree, names = page.tree, _names(page.tree)
    parts = []
    for top in tree.children:
        if top.token == "nav":
            parts.append("a navigation bar")
        elif top.token == "header":
            parts.append(f"a header with {len(top.children)} navigation {plural('button', len(top.children))}")
    rows = [n for n in tree.children if n.token == "row"]
    if rows:
        widths = {len(r.children) for r in rows}
        count = widths.pop() if len(widths) == 1 else None
        columns = f" of {count} {plural('column', count)}" if count else ""
        parts.append(f"{len(rows)} {plural('row', len(rows))}{columns}")
    forms = [n for n in tree.walk() if n.token == "form"]
    if len(forms) == 1:
        fields = sum(c.token in FIELDS for c in forms[0].children)
        parts.append(f"a form with {fields} {plural('field', fields)}")
    elif forms:
        parts.append(f"{len(forms)} forms")
    for name in ("card", "image", "button"):
        if names[name]:
            parts.append(f"{article(name) if names[name] == 1 else names[name]} {plural(name, names[name])}")
    if names["footer"]:
        parts.append("a footer")
    if not parts:
        return "An empty page."
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"A page with {listed}."


def page_questions(page: Page, rng: random.Random, *, n: int = 5) -> list[tuple[str, str]]:
    """Up to `n` short questions with answers taken from the tree: counts, colours, presence, layout.

    Questions about what the page lacks ("0", "no") are kept to a few, so most answers are informative.
    """
    tree, names = page.tree, _names(page.tree)

    def count(name):
        return f"How many {plural(name)} are there?", str(names[name])

    def exists(name):
        return f"Is there {article(name)} {name}?", "yes" if names[name] else "no"

    absent = [name for name in COUNTED if not names[name]]
    candidates = [count(name) for name in COUNTED if names[name]]
    candidates += [count(name) for name in rng.sample(absent, min(2, len(absent)))]
    there = [name for name in PRESENT if names[name]]
    missing = [name for name in PRESENT if not names[name]]
    candidates += [exists(name) for name in there + rng.sample(missing, min(len(there), len(missing)))]
    buttons = _buttons(tree)
    if buttons:
        candidates.append(("What colour is the first button?", TOKENS[buttons[0].token]["colour"]))
        candidates.append(("What colour is the last button?", TOKENS[buttons[-1].token]["colour"]))
    for form in (n for n in tree.walk() if n.token == "form"):
        submit = [c for c in form.children if TOKENS[c.token].get("name") == "button"]
        if submit:
            candidates.append(("What colour is the submit button?", TOKENS[submit[-1].token]["colour"]))
            break
    rows = [n for n in tree.children if n.token == "row"]
    for i, row in enumerate(rows[:len(ORDINALS)]):
        candidates.append((f"How many columns does the {ORDINALS[i]} row have?", str(len(row.children))))
    for header in (n for n in tree.children if n.token == "header"):
        active = [i for i, c in enumerate(header.children) if c.token == "btn-active"]
        if active and active[0] < len(ORDINALS):
            candidates.append(("Which navigation button is active?", ORDINALS[active[0]]))
    return rng.sample(candidates, min(n, len(candidates)))


def page_chat(page: Page, rng: random.Random, *, turns: int) -> list[dict]:
    """A conversation about the page: the user shows it and asks, the assistant answers, `turns` times.

    The questions are page_questions' and "Describe this page."; the picture comes with the first question.
    """
    asked = page_questions(page, rng, n=turns) + [("Describe this page.", describe(page))]
    messages = []
    for i, (question, answer) in enumerate(rng.sample(asked, min(turns, len(asked)))):
        messages += [{"role": "user", "content": (IMAGE_TOKEN if i == 0 else "") + question},
                     {"role": "assistant", "content": answer}]
    return messages
