"""The frozen decoder: where its layers are, and how the gated cross-attention blocks run before them."""

from collections.abc import Callable

import torch
from torch import nn

# Dotted paths to the decoder layers of common Hugging Face causal LMs, tried in order.
DECODER_LAYER_PATHS = (
    "model.layers",  # Llama, SmolLM2, TinyLlama, Qwen2, Mistral, Gemma, Phi-3
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia, GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "model.language_model.layers",  # multimodal wrappers of the above
)


def find_decoder_layers(lm: nn.Module, path: str | None = None) -> nn.ModuleList:
    """The LM's decoder layers, at `path` (e.g. "model.layers") or at the first known path that exists."""
    for candidate in [path] if path else DECODER_LAYER_PATHS:
        module = lm
        for name in candidate.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
        if path:
            raise ValueError(f"{type(lm).__name__} has no list of decoder layers at '{path}'")
    raise ValueError(
        f"could not find the decoder layers of {type(lm).__name__}: tried {', '.join(DECODER_LAYER_PATHS)}; "
        "set model.decoder_layers_attr to the dotted path of its nn.ModuleList of layers"
    )


def cross_attention_layer_indices(num_layers: int, *, every_n: int, first: int) -> list[int]:
    """Decoder layers that get a gated cross-attention block before them: every n-th, from `first` on.

    As in OpenFlamingo, the n-th, 2n-th, ... layers (so the top layer always has one when n divides the depth).
    """
    indices = [i for i in range(num_layers) if (i + 1) % every_n == 0 and i >= first]
    if not indices:
        raise ValueError(
            f"no decoder layer gets cross-attention: {num_layers} layers, every {every_n}, from layer {first}"
        )
    return indices


def run_before(layer: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Run `fn` on a decoder layer's input hidden states before the layer itself (a forward pre-hook).

    A hook keeps the LM's own modules and state-dict keys untouched, whatever its architecture.
    """

    def hook(module, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = fn(kwargs["hidden_states"])
        return args, kwargs

    return layer.register_forward_pre_hook(hook, with_kwargs=True)


def hidden_size(lm: nn.Module) -> int:
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return getattr(config, name)
    raise ValueError(f"cannot tell the hidden size of {type(lm).__name__} from its config")
