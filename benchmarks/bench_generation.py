"""Generation speed of the default model on this machine: time to the first token and tokens/s.

    python benchmarks/bench_generation.py                  # vlm.load(): the default model
    python benchmarks/bench_generation.py --model runs/my-run --dtypes bfloat16 --batch-sizes 1 8

Each run captions `batch` images through the public API with exactly --new-tokens new tokens
(min_new_tokens = max_new_tokens, so an early end-of-text cannot shorten it). "first token" is a
whole one-token call: image loading, vision encoder, resampler, prompt prefill and one token.
"tokens/s" counts the tokens after the first of every row over the rest of the time. Each figure is the
best of --repeats runs: on a shared machine the fastest run is the one least disturbed by other work.

Without shipped default weights it builds the default model's recipe (configs/default.yaml) with fresh,
untrained adapters, saves them to a temporary folder and loads that: the same shapes, so the same speed.
"""

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vlm
from vlm import api
from vlm.config import ModelConfig, from_dict, load_yaml
from vlm.model import CONFIG_FILE, build_model


DEFAULT_RECIPE = Path(__file__).parents[1] / "configs" / "default.yaml"


def picture(seed: int) -> Image.Image:
    """A 640x480 picture: blocks of colour, so the vision encoder sees structure."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((640, 480), Image.Resampling.NEAREST)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(model: "vlm.VLM", *, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(seconds to the first token, tokens/s after it) for a batch of captions."""
    images = [picture(i) for i in range(batch)]

    def run(n):
        return lambda: model.caption(images, max_new_tokens=n, min_new_tokens=n)

    run(2)()  # warm up: first calls allocate and pick kernels
    firsts = [timed(run(1)) for _ in range(repeats)]
    totals = [timed(run(new_tokens)) for _ in range(repeats)]
    first, total = min(firsts), min(totals)
    return first, batch * (new_tokens - 1) / (total - first)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved model folder; default: vlm.load()'s default model")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or api.DEFAULT_MODEL_DIR
        if args.model is None and not (folder / CONFIG_FILE).is_file():
            print(f"default weights not installed: timing {DEFAULT_RECIPE.name}'s model with fresh adapters")
            config = from_dict(ModelConfig, load_yaml(DEFAULT_RECIPE)["model"], where="model")
            folder = build_model(config).save_pretrained(Path(scratch) / "default")
        print(f"{date.today()}  {machine()}  load average {os.getloadavg()[0]:.2f}")
        print(f"{'dtype':<9} {'batch':>5} {'first token (ms)':>17} {'tokens/s':>9}")
        for dtype in args.dtypes:
            model = vlm.load(folder, dtype=dtype)
            for batch in args.batch_sizes:
                first, rate = bench(model, batch=batch, new_tokens=args.new_tokens, repeats=args.repeats)
                print(f"{dtype:<9} {batch:>5} {first * 1000:>17,.0f} {rate:>9,.1f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
