"""Is there still something to learn from a data source at a batch size? The adapters' gradients, batch by batch.

    python benchmarks/probe_gradient_noise.py configs/default-chat-stage.yaml --source sketch-pages
    python benchmarks/probe_gradient_noise.py configs/default-chat-stage.yaml --source easy-vqa --model M --batches 24

Takes `--batches` batches of `--batch-size` examples from one of the recipe's sources (drawn as training draws
them, from `--seed`), computes the trained model's gradient on each, and reports per group of parameters:

- `agreement`: the cosine between the summed gradient of the first half of the batches and that of the second
  half. Near 0 when the batches pull every which way (noise: a step at this batch size mostly wanders), near 1
  when they agree on a direction (a step makes progress).
- `per element`: the mean over parameters of |sum of its gradients| / sqrt(sum of their squares): 0.80 for pure
  noise, sqrt(batches) for a gradient every batch agrees on.

A loss that has stopped falling with agreement near 0 is at what this batch size and learning rate can reach.
"""

import argparse
import itertools
import math
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import vlm
from vlm.model import VisionLanguageModel
from vlm.train.batching import Collator, TrainStep
from vlm.train.config import ConfigError, load_train_config
from vlm.train.sources import build_source


def group_name(parameter: str) -> str:
    """resampler.layers.0.1.to_q.weight -> resampler.layers; cross_attn.15.ff.0.weight -> cross_attn.15."""
    return ".".join(parameter.split(".")[:2])


def gradient_noise(model: VisionLanguageModel, batches: list, *, dtype: torch.dtype | None = None) -> dict:
    """batches (Collator output, an even number) -> {"loss": mean loss, "groups": {group: (rms, agreement,
    per element)}}: each trained parameter's gradient on each batch, compared between the batches."""
    if len(batches) < 2 or len(batches) % 2:
        raise ValueError(f"gradient_noise needs an even number of batches, at least 2; got {len(batches)}")
    parameters = model.trainable_parameters()
    halves = [{name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()} for _ in range(2)]
    squares = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()}
    step, losses = TrainStep(model), []
    model.train()
    for i, batch in enumerate(batches):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _ = step(batch)
        loss.backward()
        losses.append(loss.item())
        for name, p in parameters.items():
            grad = p.grad.float() if p.grad is not None else torch.zeros_like(squares[name])
            halves[i * 2 // len(batches)][name] += grad
            squares[name] += grad**2
    model.zero_grad(set_to_none=True)
    grouped = defaultdict(list)
    for name in parameters:
        grouped[group_name(name)].append(name)
    groups = {}
    for group, names in grouped.items():
        first, second = (torch.cat([half[n].flatten() for n in names]) for half in halves)
        square = torch.cat([squares[n].flatten() for n in names])
        rms = math.sqrt(square.mean().item() / len(batches))
        agreement = F.cosine_similarity(first, second, dim=0).item()
        per_element = ((first + second).abs() / square.sqrt().clamp_min(1e-30))[square > 0].mean().item()
        groups[group] = (rms, agreement, per_element)
    return {"loss": sum(losses) / len(losses), "groups": groups}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a training recipe (YAML): its sources and max_length are used")
    parser.add_argument("--source", required=True, help="the name of one of the recipe's data sources")
    parser.add_argument("--model", default=None, help="a saved model folder (default: the shipped one)")
    parser.add_argument("--batches", type=int, default=24, help="an even number (default 24)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=123_456, help="the first example's index in the source")
    parser.add_argument("--dtype", default="bfloat16", help="autocast dtype, or float32 (default bfloat16)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    args = parser.parse_args()
    if args.batches < 2 or args.batches % 2 or args.batch_size < 1:
        parser.error("--batches must be even and at least 2, --batch-size at least 1")
    try:
        config = load_train_config(args.config, args.set)
    except ConfigError as error:
        parser.error(str(error))
    sources = {source.name: source for source in config.data.sources}
    if args.source not in sources:
        parser.error(f"--source {args.source!r} is not in {args.config}: it has {list(sources)}")
    model = vlm.load(args.model).model  # float32 weights; --dtype autocasts, as training does
    source = build_source(sources[args.source], tokenizer=model.tokenizer)
    collate = Collator(model, max_length=config.data.max_length, max_pixels=config.data.max_pixels, on_error={})
    started = time.perf_counter()
    wanted = args.batches * args.batch_size
    if hasattr(source, "__getitem__"):  # map-style: from --seed on
        examples = [source[(args.seed + i) % len(source)] for i in range(wanted)]
    else:  # a stream (webdataset, JSONL): its first examples
        examples = list(itertools.islice(iter(source), wanted))
        if len(examples) < wanted:
            parser.error(f"--source {args.source!r} has {len(examples)} examples, fewer than {wanted}")
    batches = [collate(examples[i : i + args.batch_size]) for i in range(0, len(examples), args.batch_size)]
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    result = gradient_noise(model, batches, dtype=dtype)
    skipped = sum(collate.skipped.values())  # as in training: too long for max_length, or unreadable
    print(f"model: {args.model or 'shipped'}  source: {args.source}  {args.batches} batches of {args.batch_size}"
          f" ({skipped} examples skipped)  loss {result['loss']:.3f}  {time.perf_counter() - started:.0f} s")
    print(f"noise alone: agreement 0, per element {math.sqrt(2 / math.pi):.2f};"
          f" batches that all agree: 1, {math.sqrt(args.batches):.2f}")
    print(f"{'group':26s} {'grad rms':>10s} {'agreement':>10s} {'per element':>12s}")
    for group, (rms, agreement, per_element) in result["groups"].items():
        print(f"{group:26s} {rms:10.2e} {agreement:10.3f} {per_element:12.2f}")


if __name__ == "__main__":
    main()
