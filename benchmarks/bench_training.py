"""How fast a training recipe trains here: examples a second, and how much of what the LM computes is padding.

    python benchmarks/bench_training.py                      # configs/default-stage.yaml, batches of 8 on the CPU
    python benchmarks/bench_training.py --batch-size 64 --grad-accum 1 4 --workers 14 --steps 30   # on a GPU

Each row builds the trainer of `vlm train` (the recipe with the given batch size, micro-batches and loading
workers; adapters as initialised, gates at zero: the same compute as a trained model) and times `--steps`
optimiser steps after `--warmup`. Every row draws the same examples. `order`: `by length`, the loader's own
(each step's micro-batches cut from its examples sorted by length), or `drawn` (cut in the order drawn, as
the loader did before). `real tokens`: the share of the token positions the LM computed that were not padding.
Paths in the recipe are read from the working directory: run it from the repository root.
"""

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch

from bench_generation import machine
from vlm.train import loader as loader_module
from vlm.train.config import load_train_config
from vlm.train.distributed import init_world
from vlm.train.trainer import Trainer


def in_draw_order(rows, size):
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def time_training(args, grad_accum: int, order: str) -> tuple[float, float, float]:
    """(examples a second, share of real tokens, mean loss) over args.steps steps after args.warmup."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = [f"run.output_dir={folder}", f"run.batch_size={args.batch_size}", f"run.grad_accum={grad_accum}",
                     f"run.data_workers={args.workers}", "run.max_minutes=null", "run.log_every=1000000"]
        config = load_train_config(args.config, overrides + args.set)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer = Trainer(config, world=init_world(config.run.device))
        tokens = {"real": 0, "computed": 0}
        next_step = trainer.loader.next_step

        def counted_step():
            batches = next_step()
            for batch in batches:
                tokens["real"] += int(batch.attention_mask.sum())
                tokens["computed"] += batch.attention_mask.numel()
            return batches

        trainer.loader.next_step = counted_step
        loader_module.by_length, cut = (in_draw_order if order == "drawn" else loader_module.by_length), loader_module.by_length
        try:
            for _ in range(args.warmup):
                trainer.train_step()
            tokens.update(real=0, computed=0)
            started, losses = time.perf_counter(), []
            for _ in range(args.steps):
                losses.append(trainer.train_step()[0])
            if trainer.world.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        finally:
            loader_module.by_length = cut
            trainer.loader.close()
    return args.steps * args.batch_size / seconds, tokens["real"] / tokens["computed"], sum(losses) / len(losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default-stage.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, nargs="+", default=[1, 2, 4], help="micro-batches per step")
    parser.add_argument("--orders", nargs="+", default=["drawn", "by length"], choices=["drawn", "by length"])
    parser.add_argument("--workers", type=int, default=1, help="run.data_workers")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another recipe override")
    args = parser.parse_args()
    print(f"{machine()}  load average {os.getloadavg()[0]:.2f}  recipe {args.config}")
    print(f"steps of {args.batch_size} examples, {args.workers} loading workers, {args.steps} steps after {args.warmup}")
    print(f"{'micro-batches':>13} {'order':>10} {'examples/s':>10} {'real tokens':>11} {'loss':>7}")
    for grad_accum in args.grad_accum:
        for order in args.orders if grad_accum > 1 else ["drawn"]:  # one micro-batch: nothing to reorder
            rate, real, loss = time_training(args, grad_accum, order)
            print(f"{grad_accum:13d} {order:>10} {rate:10.2f} {real:11.3f} {loss:7.4f}")


if __name__ == "__main__":
    main()
