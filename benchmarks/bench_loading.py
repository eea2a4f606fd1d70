"""How fast a training recipe's examples load: per source on one core, and through the trainer's loader.

    python benchmarks/bench_loading.py                                   # configs/default.yaml
    python benchmarks/bench_loading.py --config configs/tiny.yaml --workers 0 1 2 --steps 10

The trainer logs `data_wait`, the share of a run spent waiting for batches; when it is high, this says
where the time goes. Per source: milliseconds to make one example (`source[i]`: for generated pages,
drawing the page) and to load it (`Collator.load`: decode and resize the pictures, tokenise), on one
thread. Then the trainer's `StepLoader` with each number of workers: examples a second over whole steps
of `--batch-size`, after two steps of warm-up, the way `vlm train` draws them (same mixture, same seed).
Then the crossing from worker to trainer alone, for pictures sent as torch tensors (shared memory and a
file descriptor each) and as numpy arrays (inside the pickle, as the loader sends them). Last, the loader
beside a stand-in training step of `--step-seconds` that sleeps (a step that leaves the interpreter free)
or holds the GIL (pure Python), at Python's default thread switch interval and at the loader's own (0.5 ms):
the pool's threads that send tasks and receive results need the GIL too.
Paths in the recipe are read from the working directory: run it from the repository root.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np
import torch

from bench_generation import machine
from vlm.model import build_model
from vlm.train.batching import Collator
from vlm.train.config import load_train_config
from vlm.train.loader import EXAMPLES_PER_TASK, SWITCH_INTERVAL, StepLoader, widen_result_pipe
from vlm.train.sources import build_mixture, build_source


def per_source(config, collate: Collator, tokenizer, examples: int) -> None:
    print(f"\none example on one thread ({examples} per source)")
    print(f"{'source':24} {'make ms':>8} {'load ms':>8} {'tokens':>7}")
    for source in config.data.sources:
        items = build_source(source, tokenizer=tokenizer)
        make, load, tokens = [], [], []
        for i in range(examples):
            started = time.perf_counter()
            example = items[(i * 7919) % len(items)]  # spread over the source
            made = time.perf_counter()
            row = collate.load(example)
            load.append(time.perf_counter() - made)
            make.append(made - started)
            tokens.append(len(row.input_ids) if row else 0)
        print(f"{source.name:24} {1000 * statistics.mean(make):8.1f} {1000 * statistics.mean(load):8.1f} "
              f"{statistics.mean(tokens):7.0f}")


def through_loader(config, collate: Collator, tokenizer, workers: int, steps: int, batch_size: int, *,
                   train_step=lambda: None, switch_interval: float | None = None) -> tuple[float, float, float]:
    """(examples a second, data_wait, collating) over `steps` steps after two of warm-up, each step followed by
    train_step(); the last two as shares of the time, as the trainer logs them."""
    mixture = build_mixture(config.data.sources, tokenizer=tokenizer, seed=config.run.seed)
    loader = StepLoader(mixture, collate, batch_size=batch_size, micro_batch=batch_size,
                        slice_of=lambda draws: draws, workers=workers)
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)  # after the loader, which sets SWITCH_INTERVAL itself
    try:
        for _ in range(2):
            loader.next_step()
        waited, collated, started = 0.0, loader.collating, time.perf_counter()
        for _ in range(steps):
            waiting = time.perf_counter()
            loader.next_step()
            waited += time.perf_counter() - waiting
            train_step()
        elapsed = time.perf_counter() - started
        return steps * batch_size / elapsed, waited / elapsed, (loader.collating - collated) / elapsed
    finally:
        loader.close()  # the switch interval back to what it was before the loader


def _pictures_as_tensors(_):
    return [torch.zeros(3, 288, 512, dtype=torch.uint8) for _ in range(EXAMPLES_PER_TASK)]


def _pictures_as_arrays(_):
    return [np.zeros((3, 288, 512), dtype=np.uint8) for _ in range(EXAMPLES_PER_TASK)]


def crossing(workers: int, tasks: int) -> None:
    """Pictures a second that reach the trainer from workers that only make them: the cost of the crossing."""
    print(f"\nthe crossing alone: {workers} workers return {tasks} tasks of {EXAMPLES_PER_TASK} 288x512 pictures")
    print(f"{'as':>12} {'result pipe':>11} {'pictures/s':>10}")
    for name, make, widen in (("torch tensor", _pictures_as_tensors, False), ("numpy array", _pictures_as_arrays, False),
                              ("numpy array", _pictures_as_arrays, True)):
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pipe = "1 MB" if widen and widen_result_pipe(pool) else "default"  # the trainer's loader widens it
            pool.map(make, range(workers))  # start them
            started = time.perf_counter()
            pictures = sum(len(result) for result in pool.imap(make, range(tasks)))
            print(f"{name:>12} {pipe:>11} {pictures / (time.perf_counter() - started):10.0f}")


def _hold_the_gil(seconds: float):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def beside_a_trainer(config, collate: Collator, tokenizer, workers: int, steps: int, batch_size: int,
                     step_seconds: float) -> None:
    """data_wait of the trainer's loader when each training step sleeps or holds the GIL for step_seconds, and
    collating: with workers, a thread pads the next step's batches while this one trains, so a step that leaves
    the interpreter free (a GPU's) hides it."""
    print(f"\nbeside a training step of {step_seconds} s: {workers} workers, steps of {batch_size}")
    print(f"{'the step':>14} {'switch interval':>15} {'data_wait':>9} {'collating':>9} {'examples/s':>10}")
    default = sys.getswitchinterval()
    for name, step in (("sleeps", time.sleep), ("holds the GIL", _hold_the_gil)):
        for interval in (default, SWITCH_INTERVAL):
            rate, data_wait, collating = through_loader(config, collate, tokenizer, workers, steps, batch_size,
                                             train_step=lambda: step(step_seconds), switch_interval=interval)
            print(f"{name:>14} {1000 * interval:>12.1f} ms {data_wait:>9.2f} {collating:>9.2f} {rate:>10.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=40, help="examples per source for the per-source table")
    parser.add_argument("--step-seconds", type=float, default=0.6, help="the stand-in training step of the last table")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loading worker
    config = load_train_config(args.config)
    model = build_model(config.model)  # its tokenizer and its encoder's input size
    data = config.data
    collate = Collator(model, max_length=data.max_length, max_pixels=data.max_pixels,
                       on_error={s.name: s.on_error for s in data.sources})
    print(f"{machine()}  load average {os.getloadavg()[0]:.2f}  recipe {args.config}")
    per_source(config, collate, model.tokenizer, args.examples)
    print(f"\nthe trainer's loader, steps of {args.batch_size} ({args.steps} steps after 2 of warm-up)")
    print(f"{'workers':>7} {'examples/s':>10}")
    for workers in args.workers:
        rate, _, _ = through_loader(config, collate, model.tokenizer, workers, args.steps, args.batch_size)
        print(f"{workers:7d} {rate:10.1f}")
    crossing(max(args.workers), tasks=200)
    beside_a_trainer(config, collate, model.tokenizer, max(max(args.workers), 1), args.steps, args.batch_size,
                     args.step_seconds)


if __name__ == "__main__":
    main()
