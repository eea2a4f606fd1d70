"""Frozen vision encoders that return a grid of image tokens, and the preprocessing that matches them."""

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import nn
from torch.nn import functional as F


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
    (benchmarks/probe_element_features.py).
    Both maps come from one pass. Appended channels go last (colours, then these), so a run that turns one on can
    start from adapters trained without it (`VisionLanguageModel.load_adapters(new_token_channels=...)`).
    """

    def __init__(self, *, model: nn.Module, family: str, image_size: tuple[int, int], mean, std, colour_grid: int = 0,
                 half_stride_features: bool = False):
        super().__init__()
        if family not in ("open_clip", "timm"):
            raise ValueError(f"unknown vision family {family!r}: expected 'open_clip' or 'timm'")
        self.model = model
        self.family = family
        self.image_size = tuple(image_size)
        self.colour_grid = colour_grid
        if half_stride_features and family != "timm":
            raise ValueError("half_stride_features needs a timm CNN: a ViT has a single token grid")
        self.half_stride_stage = _half_stride_stage(model) if half_stride_features else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        if family == "open_clip":
            model.output_tokens = True
        model.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            grid, half = self._feature_maps(torch.zeros(1, 3, *self.image_size, dtype=next(model.parameters()).dtype))
        self.width = grid.shape[1] + 3 * colour_grid**2 + (0 if half is None else half.shape[1])
        self.grid_size = tuple(grid.shape[2:])

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout and batch-norm statistics stay fixed

    def _feature_maps(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # -> the last map (b, d, rows, cols) and, with half_stride_features, (b, 4 d_half, rows, cols)
        if self.family == "open_clip":
            _, tokens = self.model(pixels)
            rows, cols = (s // p for s, p in zip(self.image_size, _pair(self.model.patch_size)))
            return rearrange(tokens, "b (r c) d -> b d r c", r=rows, c=cols), None
        if self.half_stride_stage is None:
            return self.model.forward_features(pixels), None
        last, (half,) = self.model.forward_intermediates(pixels, indices=[self.half_stride_stage])
        rows, cols = last.shape[2:]
        if tuple(half.shape[2:]) != (2 * rows, 2 * cols):
            raise ValueError(f"half_stride_features needs an image_size whose half-stride map is twice the last map: "
                             f"{list(self.image_size)} gives {tuple(half.shape[2:])} and {(rows, cols)} "
                             f"(use multiples of {self.model.feature_info[-1]['reduction']})")
        # Standardised per sub-cell: the stage's raw values are ~30x the last map's (mean |x| 3.7 against 0.13 on
        # generated pages), and Adam moves each zero-started projection column as far as any other at every step.
        half = F.layer_norm(half.movedim(1, -1), half.shape[1:2]).movedim(-1, 1)
        return last, rearrange(half, "b ch (r i) (c j) -> b (i j ch) r c", i=2, j=2)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Frozen: run in the tower's own dtype. Under bf16 autocast PyTorch's ViT attention leaves its fast
        # path (3.7x slower for ViT-B-32 on CPU, README.md, "Performance").
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            features, half = self._feature_maps(pixels.to(dtype))  # (b, d, rows, cols)
            maps = [features]
            if self.colour_grid:
                rows, cols, k = *features.shape[2:], self.colour_grid
                colours = F.adaptive_avg_pool2d(pixels.to(dtype), (rows * k, cols * k))
                maps.append(rearrange(colours, "b ch (r i) (c j) -> b (i j ch) r c", i=k, j=k))
            if half is not None:
                maps.append(half)
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


def _half_stride_stage(model: nn.Module) -> int:
    """The index (for timm's forward_intermediates) of the stage at half the last stage's stride."""
    stages = getattr(model, "feature_info", None)
    if not stages:
        raise ValueError("half_stride_features needs a timm CNN that lists its stages (feature_info)")
    wanted = stages[-1]["reduction"] // 2
    found = [i for i, stage in enumerate(stages) if stage["reduction"] == wanted]
    if not found:
        raise ValueError(f"half_stride_features: {type(model).__name__} has no stage at stride {wanted}")
    return found[-1]


def _pair(x) -> tuple[int, int]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)
