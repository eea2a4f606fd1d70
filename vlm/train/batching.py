"""Examples -> padded tensors, and the on-disk cache of frozen image features.

A batch's `target_weight` (loss weight x target tokens, summed) lets the trainer normalise the loss by the
whole global batch instead of by each micro-batch: the gradient is then the same however the batch is split
over processes and accumulation steps.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.config import FINER_FEATURES
from vlm.data import DataError, Example
from vlm.fileio import atomic_write
from vlm.images import ImageError
from vlm.model import MediaState, VisionLanguageModel
from vlm.prompts import IGNORE_INDEX, encode


class Row(NamedTuple):
    """One loaded example, as Collator.load makes it (in a data-loading worker or here)."""

    input_ids: list[int]
    labels: list[int]
    images: list  # (3, h, w) uint8 tensors at the encoder's input size, or PIL images for the feature cache
    loss_weight: float
    source: str  # the data source's name


@dataclass
class Batch:
    input_ids: torch.Tensor  # (b, t), right-padded
    attention_mask: torch.Tensor  # (b, t)
    labels: torch.Tensor  # (b, t): IGNORE_INDEX wherever the model takes no loss
    loss_weights: torch.Tensor  # (b,)
    targets: torch.Tensor  # (b,): target tokens per example
    sources: list[str]  # (b,): the data source of each example
    num_images: torch.Tensor  # (b,): real images per example
    target_weight: float  # sum over target tokens of their example's loss weight
    images: list[Image.Image]  # the real images in order (feature cache), or [] when pixels are given
    pixels: torch.Tensor | None = None  # (b, m, 3, h, w) uint8 at the encoder's input size, zeros pad


class Collator:
    """Loads and encodes examples; a bad one (unreadable image, too long to fit) is skipped or raises, per source.

    With `pixels`, images are resized to the encoder's input here (uint8), which data-loading workers can
    then do beside the training step; without, they stay PIL images for the feature cache.
    """

    def __init__(self, model: VisionLanguageModel, *, max_length: int, max_pixels: int, on_error: dict[str, str],
                 pixels: bool = True):
        self.model, self.max_length, self.max_pixels, self.on_error = model, max_length, max_pixels, on_error
        self.pixels = pixels
        self.skipped = Counter()  # (source, reason) -> examples

    def __call__(self, examples: list[Example]) -> Batch:
        return self.collate([self.load(example) for example in examples])

    def collate(self, rows: list[Row | None]) -> Batch:
        """Rows from `load` (None: a skipped example) -> one padded batch."""
        rows = [row for row in rows if row is not None]
        if not rows:  # every example was bad: one target-less token keeps the collective steps in step
            rows = [Row([self.model.tokenizer.pad_token_id], [IGNORE_INDEX], [], 0.0, "")]
        length = max(len(row.input_ids) for row in rows)
        pad = self.model.tokenizer.pad_token_id
        input_ids = torch.tensor([row.input_ids + [pad] * (length - len(row.input_ids)) for row in rows])
        labels = torch.tensor([row.labels + [IGNORE_INDEX] * (length - len(row.labels)) for row in rows])
        attention_mask = torch.tensor([[1] * len(row.input_ids) + [0] * (length - len(row.input_ids)) for row in rows])
        labels = self.model.loss_labels(input_ids, labels, attention_mask)  # what the loss will count
        loss_weights = torch.tensor([row.loss_weight for row in rows], dtype=torch.float32)
        targets = (labels[:, 1:] != IGNORE_INDEX).sum(1)  # the model predicts token t+1 from t
        images = [image for row in rows for image in row.images]
        num_images = torch.tensor([len(row.images) for row in rows])
        pixels = None
        if self.pixels and images:
            real = torch.arange(int(num_images.max()))[None] < num_images[:, None]  # (b, m)
            pixels = torch.zeros(*real.shape, *images[0].shape, dtype=torch.uint8)  # (b, m, 3, h, w)
            pixels[real] = torch.stack(images)
            images = []
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            loss_weights=loss_weights,
            targets=targets,
            sources=[row.source for row in rows],
            num_images=num_images,
            target_weight=float((targets * loss_weights).sum()),
            images=images,
            pixels=pixels,
        )

    def load(self, example: Example) -> Row | None:
        """One example -> its Row, or None when it is skipped (counted)."""
        try:
            images = example.load_images(max_pixels=self.max_pixels)
            encoded = encode(example.segments, self.model.tokenizer, max_length=self.max_length)
        except (ImageError, ValueError) as e:
            if self.on_error.get(example.source, "skip") == "raise":
                raise DataError(f"source {example.source!r}: {e}") from e
            self.skipped[example.source, type(e).__name__] += 1
            return None
        images = images[encoded.first_image : encoded.first_image + encoded.num_images]
        if self.pixels:
            images = [self.model.vision.resize(image) for image in images]
        return Row(encoded.input_ids, encoded.labels, images, example.loss_weight, example.source)


class TrainStep(nn.Module):
    """One micro-batch -> (its weighted mean loss, each example's summed token losses (b,), detached).
    A module, so DDP sees the whole forward, resampler included.

    Images go through the frozen encoder, or come from the feature cache when there is one.
    """

    def __init__(self, model: VisionLanguageModel, features: "FeatureCache | None" = None):
        super().__init__()
        self.model, self.features = model, features

    def forward(self, batch: Batch) -> torch.Tensor:
        # + 0 x every trained parameter: a batch that reaches none of them (no image, nothing to learn) still
        # has a backward pass, with zero gradients, so each process takes part in every all-reduce
        anchor = sum(p.flatten()[0] for p in self.model.trainable_parameters().values()) * 0.0
        output = self.output(batch)
        return output["loss"] + anchor, output["example_losses"]

    def output(self, batch: Batch) -> dict:
        device = self.model.special_embeddings.device
        tensors = dict(
            attention_mask=batch.attention_mask.to(device),
            labels=batch.labels.to(device),
            loss_weights=batch.loss_weights.to(device),
        )
        input_ids = batch.input_ids.to(device)
        if batch.pixels is not None:
            pixels = self.model.vision.normalize(batch.pixels.to(device))  # (b, m, 3, h, w)
            return self.model(input_ids, pixel_values=pixels, **tensors)
        if not batch.images:
            return self.model(input_ids, **tensors)
        real = torch.arange(int(batch.num_images.max()))[None] < batch.num_images[:, None]  # (b, m)
        tokens = self.features(batch.images)  # (k, n, c), in the order of real's True
        latents = self.model.resample(tokens.unsqueeze(1).to(device), real.to(device))  # (b, m, l, d)
        return self.model(input_ids, media=MediaState(latents=latents), **tensors)


class FeatureCache:
    """The frozen encoder's output tokens per image, on disk: an image is encoded once, then read back.

    Keyed by a hash of the pixels, the encoder and its weights, the input size and the compute dtype, so a
    changed encoder or precision never reads stale features. Files are written atomically.
    """

    def __init__(self, folder: str | Path, *, model: VisionLanguageModel, dtype: torch.dtype | None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vision, self.dtype = model.vision, dtype
        config = model.config
        colours = f"|colour_grid={self.vision.colour_grid}" if self.vision.colour_grid else ""  # older keys stay valid
        finer = "".join(f"|{name}" for name in FINER_FEATURES if getattr(config, name))
        self.signature = f"{config.vision}|{config.vision_weights}|{self.vision.image_size}|{dtype}{colours}{finer}".encode()
        self.hits = self.misses = 0

    def key(self, image: Image.Image) -> str:
        digest = hashlib.sha256(self.signature)
        digest.update(f"{image.mode}|{image.size}|".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> tokens (k, n, c), float32 on the CPU."""
        keys = [self.key(image) for image in images]
        found = {key: load_file(str(self.path(key)))["tokens"] for key in set(keys) if self.path(key).is_file()}
        missing = [i for i, key in enumerate(keys) if key not in found]
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        if missing:
            device = self.vision.mean.device
            pixels = torch.stack([self.vision.preprocess(images[i]) for i in missing]).to(device)
            with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                tokens = self.vision(pixels).float().cpu()
            for i, features in zip(missing, tokens):
                path = self.path(keys[i])
                path.parent.mkdir(exist_ok=True)
                atomic_write(path, lambda tmp, t=features.contiguous(): save_file({"tokens": t}, str(tmp)))
                found[keys[i]] = features
        return torch.stack([found[key] for key in keys])
