"""Seconds to turn one sketch into HTML with the default model, on this machine, one sketch per call.

    python benchmarks/bench_sketch2html.py                     # vlm.load(): the default model, bf16 and fp32
    python benchmarks/bench_sketch2html.py --model runs/default/final   # a trained run of configs/default.yaml
    python benchmarks/bench_sketch2html.py --model runs/my-run --dtypes bfloat16 --pages 10
    python benchmarks/bench_sketch2html.py --dtypes bfloat16 --decoding words any   # the DSL word list's gain

Each call is what `vlm sketch2html IMG` does after loading: read the picture, run the frozen encoder and the
resampler, then write the page DSL greedily until it ends and compile it to HTML. The pages are held out
from training (seeds from 90,000,000, as `vlm eval write-sets` uses), drawn in the hand-drawn style.
Model loading is timed apart: it happens once per process. The time depends on how long the page the model
writes is, so it needs trained weights (fresh adapters ramble to the token limit): "right pages" counts the
pages written exactly, a sanity check that the timed output is a real answer. `--decoding any` times the
model free to write any text (allowed_words=()), without the jump over the tokens a DSL word's start decides.
"""

import argparse
import os
import statistics
import time
from datetime import date

import torch
import transformers

import vlm
from bench_generation import machine
from vlm import api
from vlm.eval import HELD_OUT_SEED
from vlm.model import CONFIG_FILE
from vlm.sketch import dsl_tokens, generate_page, html_to_tree, render, to_dsl


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved model folder; default: vlm.load()'s default model")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--style", default="sketch")
    parser.add_argument("--decoding", nargs="+", default=["words"], choices=["words", "any"],
                        help="words: sketch_to_html's DSL word list (default); any: allowed_words=()")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    args = parser.parse_args()
    if args.model is None and not (api.DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
        parser.error("the default model is not installed (vlm/weights/default): give --model, a trained folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()  # no "Loading weights" bars inside the table

    pages = [generate_page(HELD_OUT_SEED + i) for i in range(args.pages)]
    images = [render(page, style=args.style) for page in pages]
    print(f"{date.today()}  {machine()}  load average {os.getloadavg()[0]:.2f}")
    print(f"{'dtype':<9} {'decoding':<8} {'load (s)':>8} {'median s/sketch':>15} {'max s/sketch':>12} {'DSL tokens':>10} "
          f"{'slowest page tokens':>19} {'right pages':>11}")
    for dtype in args.dtypes:
        start = time.perf_counter()
        model = vlm.load(args.model, dtype=dtype)
        load = time.perf_counter() - start
        model.sketch_to_html(images[0])  # warm up: first calls allocate and pick kernels
        for decoding in args.decoding:
            options = {"allowed_words": ()} if decoding == "any" else {}
            seconds, tokens, right = [], [], 0
            for page, image in zip(pages, images):
                start = time.perf_counter()
                html = model.sketch_to_html(image, **options)
                seconds.append(time.perf_counter() - start)
                tree = html_to_tree(html)
                tokens.append(len(dsl_tokens(tree)))
                right += to_dsl(tree) == page.dsl
            slowest = seconds.index(max(seconds))  # time grows with the page the model writes
            print(f"{dtype:<9} {decoding:<8} {load:>8.1f} {statistics.median(seconds):>15.2f} {max(seconds):>12.2f} "
                  f"{statistics.mean(tokens):>10.1f} {tokens[slowest]:>19} {right:>5}/{len(pages):<5}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
