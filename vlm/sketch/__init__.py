"""Sketch to HTML: the page DSL, its HTML compilers, a data engine of page pictures, pix2code, metrics.

    page = generate_page(7)                      # a random page: tree, DSL, HTML
    image = render(page, style="sketch")         # hand-drawn; or wireframe, pix2code, browser
    page.dsl                                     # the compact training target
    compile_html(parse_dsl(page.dsl))            # what users receive
"""

from .browser import Chromium, chromium_missing
from .dsl import Node, dsl_tokens, parse_dsl, to_dsl, to_gui
from .evaluate import Sample, evaluate_sketch2html, load_samples, write_generated_set
from .generate import Page, generate_page, make_page
from .html import PAGE_MAPPING, Mapping, compile_html, fill_texts, html_to_tree
from .layout import layout
from .metrics import element_table, score_trees, tree_edit_distance, visual_scores
from .pix2code import pix2code_mapping, pix2code_split, read_pix2code
from .questions import describe, page_chat, page_questions
from .render import STYLES, render

__all__ = [
    "Chromium", "chromium_missing", "Node", "dsl_tokens", "parse_dsl", "to_dsl", "to_gui",
    "Sample", "evaluate_sketch2html", "load_samples", "write_generated_set",
    "Page", "generate_page", "make_page", "PAGE_MAPPING", "Mapping", "compile_html", "fill_texts",
    "html_to_tree", "layout", "element_table", "score_trees", "tree_edit_distance", "visual_scores",
    "pix2code_mapping", "pix2code_split", "read_pix2code", "describe", "page_chat", "page_questions", "STYLES", "render",
]
