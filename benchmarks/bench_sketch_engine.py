"""Pages a minute of the sketch data engine, one core: generate a page, compile its HTML, draw it.

    python benchmarks/bench_sketch_engine.py [--pages 300] [--styles sketch wireframe pix2code]

The issue asks for at least 1,000 pages a minute in the sketch and wireframe styles. The
browser style is measured when Chromium is present (--styles browser).
"""

import argparse
import os
import time
from contextlib import nullcontext

from vlm.sketch import STYLES, Chromium, generate_page, render


def bench(style: str, pages: int, vocabulary: str) -> float:
    """Pages a minute for one style, generation and HTML included."""
    with Chromium() if style == "browser" else nullcontext() as browser:
        render(generate_page(0, vocabulary=vocabulary), style=style, browser=browser)  # warm up
        start = time.perf_counter()
        for seed in range(pages):
            render(generate_page(seed, vocabulary=vocabulary), style=style, browser=browser)
        return pages / (time.perf_counter() - start) * 60


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--styles", nargs="+", default=["sketch", "wireframe", "pix2code"], choices=STYLES)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the issue counts
    print(f"{'style':<10} {'vocabulary':<10} {'pages/min':>10}")
    for style in args.styles:
        for vocabulary in ("full", "pix2code"):
            pages = args.pages if style != "browser" else min(args.pages, 30)
            print(f"{style:<10} {vocabulary:<10} {bench(style, pages, vocabulary):>10,.0f}")


if __name__ == "__main__":
    main()
