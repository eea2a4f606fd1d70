"""Checkpoint averaging: the mean of several saved adapters of one model, written as one saved model.

Late in a run the gradient's direction does not persist from step to step (benchmarks/probe_gradient_noise.py),
so the weights of a run at a constant learning rate scatter around the point they are heading for; their mean
lies nearer it than any one of them (stochastic weight averaging, Izmailov et al. 2018; fairseq's
average_checkpoints.py does the same for translation models).

    vlm average runs/x/checkpoints/step-* -o runs/x/averaged --dtype bfloat16

Only the adapters are read and written (each folder's adapter.safetensors and config.json, as
`VisionLanguageModel.save_pretrained` and the trainer's checkpoints leave them): no backbone is loaded.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlm.config import to_dict
from vlm.fileio import atomic_write
from vlm.model import CONFIG_FILE, WEIGHTS_FILE, read_adapter_weights, read_config, read_saved_meta


def average_adapters(folders: list[str | Path], output: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the element-wise mean of the folders' adapters to `output`, with the first folder's config.

    The folders must hold the same model (equal configs and backbones, the same tensor names and shapes); the
    mean is taken in float32 and stored in `dtype` (default: the first folder's). `output` must not hold a
    saved model already, so no input or earlier result is overwritten.
    """
    folders, output = [Path(f) for f in folders], Path(output)
    if len(folders) < 2:
        raise ValueError(f"averaging needs at least two saved models, got {len(folders)}")
    if (output / WEIGHTS_FILE).exists():
        raise ValueError(f"{output} already holds a saved model: choose another output folder")
    metas = [read_saved_meta(folder) for folder in folders]
    # compared as parsed configs: a folder saved before a setting existed holds it at its default
    settings = [{"model": to_dict(read_config(folder)), "backbones": meta.get("backbones", {})}
                for folder, meta in zip(folders, metas)]
    for folder, these in zip(folders[1:], settings[1:]):
        for part in ("model", "backbones"):
            first, this = settings[0][part], these[part]
            differs = sorted(k for k in first.keys() | this.keys() if first.get(k) != this.get(k))
            if differs:
                key = differs[0]
                raise ValueError(f"{folder} is not the same model as {folders[0]}: {part}.{key} is "
                                 f"{this.get(key)!r} there, {first.get(key)!r} here")

    total, stored = None, None
    for folder in folders:
        state = read_adapter_weights(folder / WEIGHTS_FILE)
        if total is None:
            total = {k: v.float().clone() for k, v in state.items()}
            stored = next(iter(state.values())).dtype
            continue
        if state.keys() != total.keys():
            extra, missing = sorted(state.keys() - total.keys()), sorted(total.keys() - state.keys())
            raise ValueError(f"{folder} holds other tensors than {folders[0]}: extra {extra[:3]}, missing {missing[:3]}")
        for key, value in state.items():
            if value.shape != total[key].shape:
                raise ValueError(f"{folder}: {key} has shape {tuple(value.shape)}, {tuple(total[key].shape)} in {folders[0]}")
            total[key] += value.float()
    mean = {k: (v / len(folders)).to(dtype or stored).contiguous() for k, v in total.items()}

    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / WEIGHTS_FILE, lambda path: save_file(mean, str(path)))
    atomic_write(output / CONFIG_FILE, lambda path: path.write_text(json.dumps(metas[0], indent=2)))
    return output
