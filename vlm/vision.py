"""Frozen vision encoders that return a grid of image tokens, and the preprocessing that matches them."""

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import nn
from torch.nn import functional as F

from vlm.config import FINER_FEATURES


class VisionEncoder(nn.Module):
    """Wraps an open_clip ViT or a timm CNN: pixels (b, 3, h, w) -> tokens (b, n, width).

    open_clip: the ViT's patch tokens (not only the pooled vector). timm: the last feature map,
    one token per cell. `grid_size` is the token grid (rows, cols) for `image_size`.

    `colour_grid` k > 0 appends to each token the mean input colours of its cell's k x k sub-cells
    (3 k^2 values), for encoders whose last feature map loses colour. EfficientNet-Lite0's keeps it: a
    linear probe reads pix2code's button colours from every labelled cell (benchmarks/probe_image_path.py).

    `half_stride_features` (timm CNNs) appends to each token the stage at half the last map's stride, its cell's
    2 x 2 sub-cells stacked (space-to-depth), each standardised: at 288x512 EfficientNet-Lite0's stride-16 stage
    names 72% of a generated page's elements from their cell where the last map names 50%
    (benchmarks/probe_element_features.py). `quarter_stride_features` appends the stage at a quarter of the
    stride the same way, its 4 x 4 sub-cells: the stride-8 stage beside the other two names 80% (form fields most).
    All maps come from one pass. Appended channels go last (colours, then the half-stride stage, then the
    quarter-stride one), so a run that turns one on can start from adapters trained without it
    (`VisionLanguageModel.load_adapters(new_token_channels=...)`).
    """

    def __init__(self, *, model: nn.Module, family: str, image_size: tuple[int, int], mean, std, colour_grid: int = 0,
                 half_stride_features: bool = False, quarter_stride_features: bool = False):
        super().__init__()
        if family not in ("open_clip", "timm"):
            raise ValueError(f"unknown vision family {family!r}: expected 'open_clip' or 'timm'")
        self.model = model
        self.family = family
        self.image_size = tuple(image_size)
        self.colour_grid = colour_grid
        subdivisions = [k for k, on in zip(_FEATURES, (half_stride_features, quarter_stride_features)) if on]
        if subdivisions and family != "timm":
            raise ValueError("half_stride_features and quarter_stride_features need a timm CNN: a ViT has a single token grid")
        self.finer_stages = {k: stage_at_stride_fraction(model, k) for k in subdivisions}  # sub-cells a side -> stage
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        if family == "open_clip":
            model.output_tokens = True
        model.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            grid, finer = self._feature_maps(torch.zeros(1, 3, *self.image_size, dtype=next(model.parameters()).dtype))
        self.width = grid.shape[1] + 3 * colour_grid**2 + sum(m.shape[1] for m in finer)
        self.grid_size = tuple(grid.shape[2:])

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout and batch-norm statistics stay fixed

    def _feature_maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # -> the last map (b, d, rows, cols) and, per finer stage with k x k sub-cells a cell, (b, k^2 d_k, rows, cols)
        if self.family == "open_clip":
            _, tokens = self.model(pixels)
            rows, cols = (s // p for s, p in zip(self.image_size, _pair(self.model.patch_size)))
            return rearrange(tokens, "b (r c) d -> b d r c", r=rows, c=cols), []
        if not self.finer_stages:
            return self.model.forward_features(pixels), []
        stages = sorted(self.finer_stages.values())  # timm returns the intermediates in the order of the pass
        last, intermediates = self.model.forward_intermediates(pixels, indices=stages)
        rows, cols = last.shape[2:]
        finer = []
        for k, stage in self.finer_stages.items():
            fine = intermediates[stages.index(stage)]
            if tuple(fine.shape[2:]) != (k * rows, k * cols):
                raise ValueError(f"{_FEATURES[k]} needs an image_size whose map at 1/{k} of the last map's stride is "
                                 f"{k} times the last map: {list(self.image_size)} gives {tuple(fine.shape[2:])} and "
                                 f"{(rows, cols)} (use multiples of {self.model.feature_info[-1]['reduction']})")
            # Standardised per sub-cell: the stride-16 stage's raw values are ~30x the last map's (mean |x| 3.7 against
            # 0.13 on generated pages), and Adam moves each zero-started projection column as far as any other at every step.
            fine = F.layer_norm(fine.movedim(1, -1), fine.shape[1:2]).movedim(-1, 1)
            finer.append(rearrange(fine, "b ch (r i) (c j) -> b (i j ch) r c", i=k, j=k))
        return last, finer

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Frozen: run in the tower's own dtype. Under bf16 autocast PyTorch's ViT attention leaves its fast
        # path (3.7x slower for ViT-B-32 on CPU, README.md, "Performance").
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            features, finer = self._feature_maps(pixels.to(dtype))  # (b, d, rows, cols)
            maps = [features]
            if self.colour_grid:
                rows, cols, k = *features.shape[2:], self.colour_grid
                colours = F.adaptive_avg_pool2d(pixels.to(dtype), (rows * k, cols * k))
                maps.append(rearrange(colours, "b ch (r i) (c j) -> b (i j ch) r c", i=k, j=k))
            maps += finer
            return rearrange(torch.cat(maps, dim=1), "b d r c -> b (r c) d")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> a normalised (3, h, w) float tensor at the encoder's input size."""
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> torch.Tensor:
        """An image -> (3, h, w) uint8 at the encoder's input size: a quarter of the float tensor's bytes, for
        data-loading workers to send; `normalize` finishes it on the model's device."""
        height, width = self.image_size
        image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, h, w) from `resize` -> the encoder's normalised float input, on `pixels`' device."""
        pixels = pixels.float() / 255.0
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)


_FEATURES = dict(zip((2, 4), FINER_FEATURES))  # sub-cells a side -> the setting that appends them


def stage_at_stride_fraction(model: nn.Module, k: int) -> int:
    """The index (for timm's forward_intermediates) of the last stage at 1/k of the last stage's stride."""
    stages = getattr(model, "feature_info", None)
    if not stages:
        raise ValueError(f"{_FEATURES[k]} needs a timm CNN that lists its stages (feature_info)")
    wanted = stages[-1]["reduction"] // k
    found = [i for i, stage in enumerate(stages) if stage["reduction"] == wanted]
    if not found:
        raise ValueError(f"{_FEATURES[k]}: {type(model).__name__} has no stage at stride {wanted}")
    return found[-1]


def _pair(x) -> tuple[int, int]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)
