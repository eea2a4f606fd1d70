"""The training recipe: one typed schema for a run, read from YAML plus `--set key=value` overrides.

    model:     the backbones and adapter sizes (vlm.config.ModelConfig)
    data:      the training sources and their mixture, held-out sources, sequence length, feature cache
    optim:     AdamW
    schedule:  warm-up, then constant or cosine
    precision: fp32 | bf16 | fp16
    run:       length, batch, intervals, output folder, seed, distribution

Everything here is checked by `load_train_config`, before any weights load: an unknown key names the nearest
valid one, values are type-checked, source kinds and their options are known, files they name exist.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vlm.config import FINER_FEATURES, ConfigError, ModelConfig, from_dict, load_yaml, parse_yaml
from vlm.language_model import cross_attention_layer_indices

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
DISTRIBUTED = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SourceConfig:
    kind: str  # jsonl | webdataset | coco | coco_karpathy | vqav2 | sketch | pix2code | easy_vqa
    name: str | None = None  # unique within the run; default: the kind
    path: str | None = None  # the file, folder or shard pattern the kind reads (see README.md, "Train your own adapters")
    weight: float = 1.0  # share of the training mixture, relative to the other sources
    loss_weight: float = 1.0  # multiplies the loss of this source's examples
    on_error: str = "skip"  # a bad record or image: "skip" (counted, logged) or "raise"
    options: dict = field(default_factory=dict)  # the kind's own settings, e.g. {images: coco/train2014}

    def __post_init__(self):
        self.name = self.name or self.kind
        if self.on_error not in ("skip", "raise"):
            raise ConfigError(f"source {self.name!r}: on_error must be skip or raise, got {self.on_error!r}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"source {self.name!r}: weight must be > 0, got {self.weight}")
        if not (math.isfinite(self.loss_weight) and self.loss_weight >= 0):
            raise ConfigError(f"source {self.name!r}: loss_weight must be >= 0, got {self.loss_weight}")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    validation: list[SourceConfig] = field(default_factory=list)  # held out: validation loss every run.eval_every
    max_length: int = 512  # tokens per example; longer ones are cut from the left, never inside an image's text
    feature_cache: str | None = None  # folder for the frozen encoder's features: each image is encoded once
    max_pixels: int = 64_000_000  # bigger images are bad records

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("data.sources is empty: name at least one training source")
        for group in ("sources", "validation"):
            names = [s.name for s in getattr(self, group)]
            if len(set(names)) != len(names):
                raise ConfigError(f"data.{group}: source names must be unique, got {names}; set `name:` on each")
        if self.max_length < 8:
            raise ConfigError(f"data.max_length must be >= 8, got {self.max_length}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    gate_lr: float | None = None  # the tanh gates of cross-attention; None: lr
    projection_lr: float | None = None  # the resampler's projection of the image features; None: lr
    train_only: list[str] | None = None  # name patterns (fnmatch) of the adapter parameters that train; None: all
    weight_decay: float = 0.1  # on matrices only, not on gates, norms, biases
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping

    def __post_init__(self):
        for name in ("lr", "gate_lr", "projection_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"optim.{name} must be > 0, got {value}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.train_only is not None and not (self.train_only and all(p.strip() for p in self.train_only)):
            raise ConfigError(f"optim.train_only must list parameter-name patterns, or be null for all; "
                              f"got {self.train_only}")


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | cosine (down to min_lr_ratio * lr at the last step)
    warmup_steps: int = 0  # linear from 0
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ConfigError(f"schedule.name must be one of {list(SCHEDULES)}, got {self.name!r}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("schedule.warmup_steps must be >= 0 and schedule.min_lr_ratio in [0, 1]")


@dataclass
class RunConfig:
    output_dir: str = "runs/vlm"
    steps: int | None = None  # optimiser steps; or set epochs
    epochs: float | None = None  # passes over the map-style training sources' examples, summed
    batch_size: int = 8  # examples per optimiser step, over all processes and accumulation steps together
    grad_accum: int = 1  # micro-batches per step on each process
    init_from: str | None = None  # a saved model folder whose adapter weights start the run (fine-tuning)
    max_minutes: float | None = None  # also stop after this much training time (the cosine then ends early)
    data_workers: int = 0  # processes that load examples (draw pages, decode images) beside the step; 0: none
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    distributed: str = "ddp"  # under torchrun: ddp (the whole model on each process) | fsdp (the LM's layers sharded)
    gradient_checkpointing: bool = False  # recompute the LM's layers in the backward pass: less memory, more time
    log_every: int = 10  # steps between metrics lines
    eval_every: int | None = None  # steps between validation losses; None: at the end only (if data.validation)
    eval_batches: int = 8  # batches of batch_size per validation
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # the newest ones kept
    max_bad_steps: int = 10  # steps with a non-finite loss are skipped; more than this many stops the run

    def __post_init__(self):
        if self.steps is not None and self.steps < 1 or self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"run.steps must be >= 1 and run.epochs > 0, got {self.steps} and {self.epochs}")
        for name in ("batch_size", "grad_accum", "log_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"run.eval_every must be >= 1 or null, got {self.eval_every}")
        if self.init_from is not None and not (Path(self.init_from) / "adapter.safetensors").is_file():
            raise ConfigError(f"run.init_from: {self.init_from} holds no adapter.safetensors (a folder written by vlm train)")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"run.max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.data_workers < 0:
            raise ConfigError(f"run.data_workers must be >= 0, got {self.data_workers}")
        if self.max_bad_steps < 0:
            raise ConfigError(f"run.max_bad_steps must be >= 0, got {self.max_bad_steps}")
        if self.device not in DEVICES:
            raise ConfigError(f"run.device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"run.distributed must be one of {list(DISTRIBUTED)}, got {self.distributed!r}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + gradient scaling, GPU only)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if (self.run.steps is None) == (self.run.epochs is None):
            raise ConfigError("set exactly one of run.steps and run.epochs")
        if self.run.init_from is not None:
            self._check_init_from_token_channels()
            self._check_init_from_blocks()

    def _check_init_from_token_channels(self):
        """Channels the saved adapters read must be read here; new ones may only follow them (zero columns at the end)."""
        saved = saved_model_config(self.run.init_from)
        for i, name in enumerate(FINER_FEATURES):
            if saved.get(name) and not getattr(self.model, name):
                raise ConfigError(f"run.init_from: {self.run.init_from} was trained with model.{name}: true; "
                                  f"set it here too (--set model.{name}=true)")
            later = [other for other in FINER_FEATURES[i + 1 :] if saved.get(other)]
            if getattr(self.model, name) and not saved.get(name) and later:
                raise ConfigError(f"run.init_from: {self.run.init_from} was trained with model.{later[0]} but not "
                                  f"model.{name}, whose channels come before it: turn both on from the start")

    def _check_init_from_blocks(self):
        """The saved adapters' cross-attention blocks must all have a place here (new ones may be added)."""
        meta = saved_config(self.run.init_from)
        try:
            layers, saved = meta["backbones"]["lm_num_layers"], meta["model"]
            every, first = saved.get("cross_attn_every_n_layers", 1), saved.get("cross_attn_first_layer", 0)
            here = self.model.cross_attn_every_n_layers, self.model.cross_attn_first_layer
            left_out = sorted(set(cross_attention_layer_indices(layers, every_n=every, first=first))
                              - set(cross_attention_layer_indices(layers, every_n=here[0], first=here[1])))
        except (KeyError, TypeError, AttributeError, ValueError):
            return  # an older or unreadable config, or no block at all: loading the model says what does not fit
        if left_out:
            raise ConfigError(f"run.init_from: {self.run.init_from} has cross-attention before decoder layers "
                              f"{left_out}, which model: leaves out; it was trained with cross_attn_every_n_layers "
                              f"{every} and cross_attn_first_layer {first} "
                              f"(--set model.cross_attn_first_layer={first})")


def saved_config(folder: str | Path) -> dict:
    """A saved folder's config.json; {} when it has none or cannot be read (loading the adapters then says why)."""
    try:
        meta = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def saved_model_config(folder: str | Path) -> dict:
    """The model section of a saved folder's config.json; {} when it has none or cannot be read."""
    model = saved_config(folder).get("model", {})
    return model if isinstance(model, dict) else {}


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe, apply `--set a.b=value` overrides (values parsed as YAML), check everything.

    Relative paths resolve against the working directory, as everywhere on the command line.
    """
    from vlm.train.sources import check_source  # imported here: sources imports this module (SourceConfig)

    data = load_yaml(path)
    for override in overrides:
        set_override(data, override)
    config = from_dict(TrainConfig, data)
    for group in ("sources", "validation"):
        for i, source in enumerate(getattr(config.data, group)):
            check_source(source, where=f"data.{group}[{i}]")
    return config


def set_override(data: dict, override: str):
    """Apply one "a.b.c=value" to nested dicts; the value is YAML ("3e-4", "[288, 512]", "null", "true")."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {override!r}")
    value = parse_yaml(text, where=f"--set {key}")
    *parents, last = key.strip().split(".")
    node = data
    for part in parents:  # a number indexes a list: data.sources.0.weight=2
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: cannot find '{part}' in {type(node).__name__} {node!r:.60}")
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: cannot set '{last}' in {type(node).__name__} {node!r:.60}")


def config_dict(config: TrainConfig) -> dict:
    """The config as plain data (lists for tuples), as written to output_dir/config.yaml."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
