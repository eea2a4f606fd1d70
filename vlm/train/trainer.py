"""The training loop: AdamW on the adapters, warm-up then constant or cosine, accumulation, mixed precision,
checkpoints with exact resume, validation, and metrics (progress bar, metrics.jsonl, TensorBoard, a loss plot).

A step reads `run.batch_size` examples from the mixture on every process; each process keeps its own slice,
splits it into `run.grad_accum` micro-batches, and scales each micro-batch's loss so that the summed gradient is
that of the mean loss over every target token of the global batch. Steps with a non-finite loss are skipped.
"""

import fnmatch
import functools
import json
import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from vlm.config import FINER_FEATURES, ConfigError
from vlm.data import MapSource
from vlm.language_model import find_decoder_layers
from vlm.model import CONFIG_FILE, WEIGHTS_FILE, VisionLanguageModel, build_model
from vlm.train.batching import Batch, Collator, FeatureCache, TrainStep
from vlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vlm.train.config import TrainConfig, config_dict, saved_model_config
from vlm.train.distributed import (
    World,
    average_gradients,
    close_world,
    init_world,
    shard_language_model,
    wrap_ddp,
)
from vlm.train.loader import StepLoader
from vlm.train.metrics import Metrics, SourceLosses
from vlm.train.sources import build_mixture, source_shares

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TaskMetrics = Callable[[VisionLanguageModel], dict[str, float]]


class TooManyBadSteps(RuntimeError):
    pass


@dataclass
class Result:
    step: int
    interrupted: bool  # stopped by SIGINT after writing a checkpoint
    final: Path | None  # the saved model (output_dir/final), when training finished


def train(config: TrainConfig, *, resume: bool = False, task_metrics: TaskMetrics | None = None) -> Result:
    """Run (or with `resume`, continue) the training a config describes. Collective under torchrun.

    `task_metrics(model) -> {name: value}` runs at every evaluation beside the validation loss (on every
    process: it may generate with a sharded model) and its values go to the metrics.
    """
    world = init_world(config.run.device)
    try:
        return Trainer(config, world=world, resume=resume, task_metrics=task_metrics).fit()
    finally:
        close_world(world)


def shares_table(shares) -> str:
    """The mixture's sources with their shares of the examples and of the loss, one line each."""
    width = max(len("source"), *(len(share.name) for share in shares))
    lines = [f"{'source':{width}s}  examples  loss  target tokens per example"]
    lines += [f"{s.name:{width}s}  {s.examples:8.3f}  {s.loss:4.3f}  {s.targets:.1f}" for s in shares]
    return "\n".join(lines)


def lr_factor(step: int, *, name: str, warmup: int, total: int, min_ratio: float, time_used: float = 0.0) -> float:
    """The learning-rate multiplier after `step` optimiser steps: linear warm-up, then constant or cosine.

    `time_used` (0..1), the share of a time budget spent, ends the cosine early when time runs out first.
    """
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_used))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def parameter_groups(
    model: VisionLanguageModel, *, lr: float, gate_lr: float | None, projection_lr: float | None, weight_decay: float
) -> list[dict]:
    """Weight decay on matrices only; the tanh gates and the resampler's feature projection may have their own rates.

    A higher projection rate moves image-feature columns that an `init_from` run appended at zero faster; at ten
    times lr, in batches of 64, it raised pix2code's loss several-fold, the rest of the adapters trained or frozen
    (docs/default-model.md, runs 24 and 27).
    """
    rates = {"lr": lr, "gate_lr": gate_lr or lr, "projection_lr": projection_lr}
    # (rate, decayed) -> parameters. lr's groups come first (the logged rate), then the gates', always a group of
    # their own: without projection_lr the groups are those of checkpoints written before it, which still resume.
    groups = {("lr", True): [], ("lr", False): [], ("gate_lr", False): []}
    for name, parameter in model.trainable_parameters().items():
        if name.endswith("_gate"):
            rate = "gate_lr"
        elif projection_lr is not None and name.startswith("resampler.project."):
            rate = "projection_lr"
        else:
            rate = "lr"
        groups.setdefault((rate, rate != "gate_lr" and parameter.ndim >= 2), []).append(parameter)
    return [dict(params=params, lr=rates[rate], weight_decay=weight_decay if decayed else 0.0)
            for (rate, decayed), params in groups.items() if params]


def train_only(model: VisionLanguageModel, patterns: list[str]):
    """Freeze every adapter parameter whose name matches none of `patterns` (fnmatch, e.g. "resampler.project.*").

    So a newly added part can learn alone at a high rate without the rest following its first, noisy steps.
    """
    trained = model.trainable_parameters()
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in trained):
            parts = sorted({".".join(name.split(".")[:2]) + ".*" for name in trained})
            raise ConfigError(f"optim.train_only: {pattern!r} matches no trained parameter; they are {', '.join(parts)}")
    for name, parameter in trained.items():
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            parameter.requires_grad_(False)


def checkpoint_decoder_layers(model: VisionLanguageModel):
    """Recompute each frozen decoder layer during the backward pass instead of keeping its activations.

    The cross-attention blocks run in the layers' pre-hooks, outside what is recomputed.
    """
    for layer in find_decoder_layers(model.lm, model.config.decoder_layers_attr):
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: TrainConfig, *, world: World, resume: bool = False, task_metrics: TaskMetrics | None = None):
        """Check what can be checked, then load the model and the data, and restore a checkpoint on `resume`."""
        run = config.run
        self.config, self.world, self.output = config, world, Path(run.output_dir)
        self.task_metrics = task_metrics
        if config.precision == "fp16" and world.device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA GPU (gradient scaling); on the CPU use bf16 or fp32")
        self.micro_batch, rest = divmod(run.batch_size, world.size * run.grad_accum)
        if rest or not self.micro_batch:
            raise ConfigError(
                f"run.batch_size ({run.batch_size}) must be a multiple of processes x run.grad_accum "
                f"({world.size} x {run.grad_accum})"
            )
        if latest_checkpoint(self.output) is not None and not resume:
            raise ConfigError(
                f"{self.output} already holds checkpoints: pass --resume to continue that run, or set another run.output_dir"
            )
        seed_everything(run.seed)
        model = self.model = build_model(config.model)
        if run.init_from and not resume:
            saved = Path(run.init_from)
            try:
                meta = json.loads((saved / CONFIG_FILE).read_text())
                saved_model = saved_model_config(saved)
                new_channels = [name for name in FINER_FEATURES if getattr(config.model, name) and not saved_model.get(name)]
                new_globals = config.model.global_latents > 0 and not saved_model.get("global_latents")
                fresh_layers = model.load_adapters(saved / WEIGHTS_FILE, expected=meta.get("backbones"),
                                                   new_token_channels=bool(new_channels), new_blocks=True,
                                                   new_global_latents=new_globals)
            except (ValueError, OSError) as error:  # another model's adapters, or an unreadable folder
                raise ConfigError(f"run.init_from: {error}") from None
            if fresh_layers:
                self._log(f"run.init_from: {saved} has no cross-attention before decoder layers {fresh_layers}; "
                          "those blocks start fresh with their gates at zero")
            if new_globals:
                self._log(f"run.init_from: {saved} was trained without global latents; the resampler's "
                          f"{config.model.global_latents} start fresh")
            if new_channels:
                self._log(f"run.init_from: {saved} was trained without {' and '.join(new_channels)}; the token projection "
                          f"grows to {model.vision.width} input columns and the new ones start at zero")
        if config.optim.train_only:
            train_only(model, config.optim.train_only)
        cache = config.data.feature_cache
        self.mixture = build_mixture(config.data.sources, tokenizer=model.tokenizer, seed=run.seed)
        self.collate = self._collator(config.data.sources, pixels=cache is None)
        self.loader = StepLoader(  # before the model moves to a GPU: its workers fork
            self.mixture, self.collate, batch_size=run.batch_size, micro_batch=self.micro_batch,
            slice_of=self._my_share, workers=run.data_workers, leave_cores=world.device.type == "cuda",
        )
        self.validation = None
        if config.data.validation:
            self.validation = build_mixture(config.data.validation, tokenizer=model.tokenizer, seed=run.seed)
            self.validation_start = self.validation.state_dict()
            self.collate_validation = self._collator(config.data.validation, pixels=cache is None)
        self.steps = run.steps or self._steps_for_epochs(run.epochs)

        if run.gradient_checkpointing:
            checkpoint_decoder_layers(model)
        if world.distributed and run.distributed == "fsdp":
            shard_language_model(model, world)
        model.to(world.device).train()
        self.autocast = AUTOCAST[config.precision]
        if self.autocast is torch.bfloat16 and world.device.type == "cpu":
            # The CPU's fused attention kernel is 2.5x slower than plain matmul + softmax in bf16 (forward and
            # backward of one SmolLM2 layer: 32.7 vs 13.1 ms; README, "Performance"); in fp32 it is faster.
            model.lm.set_attn_implementation("eager")
        self.step_module = TrainStep(model, FeatureCache(cache, model=model, dtype=self.autocast) if cache else None)
        ddp = world.distributed and run.distributed == "ddp"
        self.forward_loss = wrap_ddp(self.step_module, world) if ddp else self.step_module

        self.parameters = list(model.trainable_parameters().values())
        optim, schedule = config.optim, config.schedule
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, lr=optim.lr, gate_lr=optim.gate_lr, projection_lr=optim.projection_lr,
                             weight_decay=optim.weight_decay),
            betas=optim.betas,
            eps=optim.eps,
            fused=world.device.type == "cuda" or None,
        )
        self.seconds_before = 0.0  # training time of the run before this process (resume)
        self.started = time.perf_counter()
        self.waited = 0.0  # seconds spent waiting for batches since `started` (fit() restarts both)
        factor = functools.partial(
            lr_factor, name=schedule.name, warmup=schedule.warmup_steps, total=self.steps, min_ratio=schedule.min_lr_ratio
        )
        self.scheduler = LambdaLR(self.optimizer, lambda step: factor(step, time_used=self.time_used()))
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")

        self.step, self.bad_steps, self.samples = 0, 0, 0
        self.source_losses = SourceLosses([c.name for c in self.mixture.components])
        if resume:
            self._resume()
        self.last_checkpoint = self.step if resume and self.step else None
        self.metrics = Metrics(self.output, enabled=world.is_main, resume_step=self.step)
        if world.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
            trained = sum(p.numel() for p in self.parameters) / 1e6
            self._log(f"{trained:.2f}M trained parameters; {self.steps} steps of {run.batch_size} examples "
                      f"on {world.size} x {world.device}")
            self._log(shares_table(source_shares(self.mixture, model.tokenizer, max_length=config.data.max_length)))
        self.interrupted = False

    # --- the loop ---------------------------------------------------------------------------
    def fit(self) -> Result:
        run = self.config.run
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        progress = tqdm(total=self.steps, initial=self.step, disable=not self.world.is_main, dynamic_ncols=True)
        started = self.started = time.perf_counter()
        started_step, busy_before, collating_before = self.step, self.loader.busy, self.loader.collating
        self.waited = 0.0
        try:
            while self.step < self.steps and not self._out_of_time():
                loss, grad_norm = self.train_step()
                if loss is not None:  # None: a skipped step, counted in train_step
                    self.step += 1
                    progress.update(1)
                    if self.step % run.log_every == 0 or self.step == self.steps:
                        elapsed = time.perf_counter() - started
                        rate = (self.step - started_step) * run.batch_size / elapsed
                        loading = {"data_wait": self.waited / elapsed,
                                   "collating": (self.loader.collating - collating_before) / elapsed}
                        if self.loader.workers:  # the share of the workers' time spent loading
                            loading["workers_busy"] = (self.loader.busy - busy_before) / (elapsed * self.loader.workers)
                        self._log_step(progress, loss=loss, grad_norm=grad_norm, samples_per_s=rate, **loading,
                                       **self.source_losses.means(self.world))
                    if self.evaluates and run.eval_every and self.step % run.eval_every == 0:
                        self.evaluate()
                    if self.step % run.checkpoint_every == 0:
                        self.save()
                if self.world.sum(float(self.interrupted)) > 0:  # every process stops after the same step
                    self.save()
                    self._log(f"interrupted: checkpoint of step {self.step} written; continue with --resume")
                    return Result(step=self.step, interrupted=True, final=None)
            if self.step < self.steps:
                self._log(f"run.max_minutes ({self.config.run.max_minutes}) reached after step {self.step}")
            self.save()
            if self.evaluates and not (run.eval_every and self.step % run.eval_every == 0):
                self.evaluate()
            final = self.output / "final"
            if self.world.is_main:
                self.model.save_pretrained(final)
                self._log(f"saved the trained model to {final}")
            self.world.barrier()
            return Result(step=self.step, interrupted=False, final=final)
        finally:
            signal.signal(signal.SIGINT, previous)
            progress.close()
            self.metrics.close()
            self.loader.close()

    def _log_step(self, progress: tqdm, **values: float):
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{values['samples_per_s']:.1f}")
        memory = torch.cuda.max_memory_allocated() / 2**30 if self.world.device.type == "cuda" else None
        skipped = self.world.sum(float(sum(self.collate.skipped.values())))  # bad examples, all processes
        self.metrics.log(self.step, **values, lr=lr, samples=self.samples, gpu_memory_gb=memory,
                         bad_steps=self.bad_steps, skipped=int(skipped))

    def train_step(self) -> tuple[float | None, float | None]:
        """One optimiser step -> (global mean loss, gradient norm), or (None, None) when the loss was not finite."""
        run, world = self.config.run, self.world
        waiting = time.perf_counter()
        batches = self.loader.next_step()
        self.waited += time.perf_counter() - waiting
        loss = self.backward(batches)
        self.samples += run.batch_size
        if run.distributed == "fsdp":
            average_gradients(self.parameters, world)
        self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip if clip is not None else math.inf))
        if not math.isfinite(loss) or (not self.scaler.is_enabled() and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.bad_steps += 1
            self._log(f"step {self.step + 1}: loss {loss}, gradient norm {grad_norm}: skipped ({self.bad_steps} so far)")
            if self.bad_steps > run.max_bad_steps:
                raise TooManyBadSteps(
                    f"{self.bad_steps} steps had a non-finite loss (run.max_bad_steps={run.max_bad_steps}): stopping; "
                    "lower optim.lr, check the data, or try precision fp32"
                )
            return None, None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss, grad_norm

    def backward(self, batches: list[Batch]) -> float:
        """Gradients of a global batch from this process's micro-batches; returns the global batch's mean loss.

        Each micro-batch's mean loss is scaled by its share of the global batch's target weight (and by the number
        of processes, which DDP divides by), so the gradient is that of the global mean, however it is split.
        """
        world = self.world
        total_weight = max(world.sum(sum(b.target_weight for b in batches)), 1e-8)  # the whole global batch's
        loss_sum = 0.0
        ddp = isinstance(self.forward_loss, DistributedDataParallel)
        for i, batch in enumerate(batches):
            # DDP all-reduces in the backward pass of the last micro-batch only
            sync = self.forward_loss.no_sync() if ddp and i < len(batches) - 1 else nullcontext()
            with sync, self._autocast():
                mean, example_losses = self.forward_loss(batch)
            self.scaler.scale(mean * batch.target_weight * world.size / total_weight).backward()
            loss_sum += mean.item() * batch.target_weight
            self.source_losses.add(batch.sources, example_losses.tolist(), batch.targets.tolist())
        return world.sum(loss_sum) / total_weight

    @property
    def evaluates(self) -> bool:
        return self.validation is not None or self.task_metrics is not None

    def evaluate(self):
        """Log the validation loss and the task metrics."""
        values = {}
        if self.validation is not None:
            values["val_loss"] = self.validation_loss()
        if self.task_metrics is not None:
            self.model.eval()
            values |= self.task_metrics(self.model)
            self.model.train()
        self.metrics.log(self.step, **values)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss per target token over the first run.eval_batches global batches of the validation sources."""
        run, world = self.config.run, self.world
        self.validation.load_state_dict(self.validation_start)  # the same examples every time
        self.model.eval()
        loss_sum = weight = 0.0
        for _ in range(run.eval_batches):
            mine = self._my_share([next(self.validation) for _ in range(run.batch_size)])
            for i in range(0, len(mine), self.micro_batch):
                batch = self.collate_validation(mine[i : i + self.micro_batch])
                with self._autocast():
                    loss_sum += self.step_module(batch)[0].item() * batch.target_weight
                weight += batch.target_weight
        self.model.train()
        return world.sum(loss_sum) / max(world.sum(weight), 1e-8)

    def save(self):
        if self.last_checkpoint == self.step:
            return
        state = {
            "bad_steps": self.bad_steps,
            "samples": self.samples,
            "skipped": {f"{source}/{reason}": n for (source, reason), n in self.collate.skipped.items()},
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "mixture": self.loader.state_dict(),
            "train_seconds": self.train_seconds(),
        }
        save_checkpoint(self.output, step=self.step, model=self.model, optimizer=self.optimizer, state=state,
                        world=self.world, keep=self.config.run.keep_checkpoints)
        self.last_checkpoint = self.step

    # --- helpers ----------------------------------------------------------------------------
    def _collator(self, sources, *, pixels: bool) -> Collator:
        data = self.config.data
        on_error = {s.name: s.on_error for s in sources}
        return Collator(self.model, max_length=data.max_length, max_pixels=data.max_pixels, on_error=on_error,
                        pixels=pixels)

    def _my_share(self, examples: list) -> list:
        """This process's slice of a global batch."""
        per_process = self.micro_batch * self.config.run.grad_accum
        return examples[self.world.rank * per_process : (self.world.rank + 1) * per_process]

    def train_seconds(self) -> float:
        """Training time of the whole run: this process's and, after a resume, the earlier ones'."""
        return self.seconds_before + time.perf_counter() - self.started

    def time_used(self) -> float:
        """The share of run.max_minutes spent training; 0 without a time budget."""
        if self.config.run.max_minutes is None:
            return 0.0
        return self.train_seconds() / (60 * self.config.run.max_minutes)

    def _out_of_time(self) -> bool:
        if self.config.run.max_minutes is None:  # no collective per step for runs without a budget
            return False
        return self.world.sum(float(self.time_used() >= 1.0)) > 0  # every process stops after the same step

    def _resume(self):
        found = load_checkpoint(self.output, model=self.model, optimizer=self.optimizer, world=self.world)
        if found is None:
            self._log(f"no checkpoint in {self.output}: starting from scratch")
            return
        state = found.state
        self.step, self.bad_steps, self.samples = found.step, state["bad_steps"], state["samples"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["mixture"])
        self.seconds_before = state.get("train_seconds", 0.0)
        self.collate.skipped.update({tuple(key.rsplit("/", 1)): n for key, n in state["skipped"].items()})
        self._log(f"resumed from {found.path} at step {self.step}")

    def _steps_for_epochs(self, epochs: float) -> int:
        streaming = [c.name for c in self.mixture.components if not isinstance(c.source, MapSource)]
        if streaming:
            raise ConfigError(f"run.epochs needs sources of known size; {streaming} stream: set run.steps instead")
        examples = sum(len(c.source) for c in self.mixture.components)
        return max(1, math.ceil(epochs * examples / self.config.run.batch_size))

    def _autocast(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.autocast)

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        self._log("SIGINT: finishing this step, then writing a checkpoint (Ctrl-C again to stop at once)")

    def _log(self, message: str):
        if self.world.is_main:
            tqdm.write(message)
