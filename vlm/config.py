"""Typed configuration: dataclasses built from plain dicts (YAML, JSON), checked before any weights load."""

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlm.backbones import DEFAULT_LM, DEFAULT_VISION, DEFAULT_VISION_WEIGHTS

CONFIG_VERSION = 1  # bumped when a saved config can no longer be read by older code


class ConfigError(ValueError):
    pass


FINER_FEATURES = ("half_stride_features", "quarter_stride_features")  # in the order their channels are appended


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: the backbones by name and every adapter size."""

    vision: str = DEFAULT_VISION  # "open_clip:NAME" or "timm:NAME"
    vision_weights: str | None = DEFAULT_VISION_WEIGHTS  # pretrained tag, local path, "registry:NAME", or None (random)
    image_size: tuple[int, int] | None = None  # (height, width); None: the encoder's native size
    vision_dtype: str = "float32"  # the frozen encoder's weights; bfloat16 halves its time on CPUs with bf16 units
    colour_grid: int = 0  # k > 0: each image token also carries the mean colours of its cell's k x k sub-cells
    half_stride_features: bool = False  # timm CNNs: each token also carries its 2x2 sub-cells at half the stride
    quarter_stride_features: bool = False  # timm CNNs: ... and its 4x4 sub-cells at a quarter of the stride
    lm: str = DEFAULT_LM  # "registry:NAME", local HF folder or .gguf file, or a Hugging Face id
    lm_dtype: str = "float32"
    decoder_layers_attr: str | None = None  # dotted path to the LM's decoder layers; None: found automatically
    # Perceiver Resampler
    num_latents: int = 64
    resampler_depth: int = 2
    resampler_dim: int | None = None  # None: the LM's hidden size
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    max_frames: int = 8
    spatial_positions: bool = True  # learned 2-D positions on the image tokens
    grid_latents: bool = False  # latent i starts from grid cell i's token: needs num_latents == grid cells
    resampler_grid_radius: int | None = None  # r: each grid latent reads only the cells within r of its own; None: all
    global_latents: int = 0  # g: learned latents after the grid's that read the whole picture (needs grid_latents)
    global_latents_read_by: str = "decoder"  # "decoder": output after the grid's; "grid": only the grid latents read them
    # gated cross-attention
    cross_attn_every_n_layers: int = 1
    cross_attn_first_layer: int = 0  # no blocks below this decoder layer (no backward pass below it either)
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    cross_attn_ff_mult: int = 4
    only_attend_immediate_media: bool = True
    # embeddings of <image> and <|endofchunk|>; the LM's own embedding matrix always stays frozen
    train_special_token_embeddings: bool = False
    loss_on_text_before_first_image: bool = False

    def __post_init__(self):
        positive = ["num_latents", "resampler_depth", "resampler_heads", "resampler_dim_head", "resampler_ff_mult",
                    "max_frames", "cross_attn_every_n_layers", "cross_attn_heads", "cross_attn_dim_head", "cross_attn_ff_mult"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.colour_grid < 0:
            raise ConfigError(f"model.colour_grid must be >= 0, got {self.colour_grid}")
        if self.grid_latents and not self.spatial_positions:
            raise ConfigError("model.grid_latents needs model.spatial_positions: true (the latents are the grid's cells)")
        if self.resampler_grid_radius is not None and (not self.grid_latents or self.resampler_grid_radius < 0):
            raise ConfigError(f"model.resampler_grid_radius needs model.grid_latents: true and a radius >= 0, "
                              f"got {self.resampler_grid_radius} (grid_latents: {str(self.grid_latents).lower()})")
        if self.global_latents < 0 or (self.global_latents and not self.grid_latents):
            raise ConfigError(f"model.global_latents needs model.grid_latents: true and a count >= 0, "
                              f"got {self.global_latents} (grid_latents: {str(self.grid_latents).lower()})")
        if self.global_latents_read_by not in ("decoder", "grid"):
            raise ConfigError(f"model.global_latents_read_by must be 'decoder' or 'grid', got {self.global_latents_read_by!r}")
        if self.cross_attn_first_layer < 0:
            raise ConfigError(f"model.cross_attn_first_layer must be >= 0, got {self.cross_attn_first_layer}")
        for name in ("lm_dtype", "vision_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"model.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")
        if self.image_size is not None:
            self.image_size = tuple(self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ConfigError(f"model.image_size must be [height, width], got {list(self.image_size)}")
        for name in ("vision", "lm"):
            if not getattr(self, name):
                raise ConfigError(f"model.{name} must name a backbone")
        if not self.vision.startswith(("open_clip:", "timm:")):
            raise ConfigError(f"model.vision must start with 'open_clip:' or 'timm:', got {self.vision!r}")
        for name in FINER_FEATURES:
            if getattr(self, name) and not self.vision.startswith("timm:"):
                raise ConfigError(f"model.{name} needs a timm CNN (vision: timm:NAME); {self.vision} is a ViT with one token grid")


def from_dict(cls, data: dict, *, where: str = ""):
    """Build dataclass `cls` from `data`, recursing into nested dataclasses and lists of them.

    An unknown key is an error that names it and the nearest valid key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def _coerce(hint, value, path: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path} must not be empty")
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{path} must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


class YamlLoader(yaml.SafeLoader):
    """Safe YAML as people write it: `lr: 3e-4` is a number (PyYAML's YAML 1.1 rules make it the string '3e-4')."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


def parse_yaml(text: str, *, where: str):
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = parse_yaml(path.read_text(), where=str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data
