"""The vision-language model: frozen vision encoder -> Perceiver Resampler -> gated cross-attention in a frozen LM."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from vlm import backbones
from vlm.config import CONFIG_VERSION, ConfigError, ModelConfig, from_dict, to_dict
from vlm.fileio import atomic_write
from vlm.cross_attention import GatedCrossAttentionBlock
from vlm.language_model import cross_attention_layer_indices, find_decoder_layers, hidden_size, run_before
from vlm.prompts import END_OF_CHUNK, IMAGE_TOKEN, SPECIAL_TOKENS
from vlm.resampler import PerceiverResampler
from vlm.vision import VisionEncoder

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class MediaState:
    """The image side of one forward or one whole generate call.

    `latents` (b, m, l, d) come from the resampler; `keys_values` holds each block's keys and values
    of the latents, computed on first use and reused by every later decoding step of the same call.
    `media_index` (b, t) says which image each token of the current call sees (0: none).
    """

    latents: torch.Tensor | None
    media_index: torch.Tensor | None = None
    keys_values: dict = field(default_factory=dict)


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rows (k, ...) -> (the distinct rows in order of first appearance (u, ...), copies (k,): which of them each
    row equals; None when all k are distinct). Rows are compared in full only where a cheap key (their sum) is equal."""
    keys = rows.flatten(1).sum(1, dtype=torch.float32).tolist()
    first, copies = [], []
    for i, key in enumerate(keys):
        same = (n for n, j in enumerate(first) if keys[j] == key and torch.equal(rows[j], rows[i]))
        n = next(same, len(first))
        if n == len(first):
            first.append(i)
        copies.append(n)
    if len(first) == len(keys):
        return rows, None
    return rows[first], torch.tensor(copies, device=rows.device)


class VisionLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig, *, vision: VisionEncoder, lm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.vision = vision
        self.lm = lm.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.end_of_chunk_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.register_buffer("special_ids", torch.tensor([self.image_token_id, self.end_of_chunk_id]), persistent=False)
        self.lm_vocab_size = lm.get_output_embeddings().weight.shape[0]
        self.vocab_size = max(self.lm_vocab_size, int(self.special_ids.max()) + 1)
        self.specials_follow_vocab = self.special_ids.tolist() == [self.lm_vocab_size, self.lm_vocab_size + 1]

        dim = hidden_size(lm)
        media_dim = config.resampler_dim or dim
        rows, cols = vision.grid_size
        if config.grid_latents and config.num_latents != rows * cols:  # the grid is known only once the encoder is
            raise ConfigError(f"model.grid_latents needs model.num_latents = {rows * cols}, the cells of the encoder's "
                              f"{rows}x{cols} token grid at image_size {list(vision.image_size)}; got {config.num_latents}")
        self.resampler = PerceiverResampler(
            dim=media_dim,
            media_dim=vision.width,
            depth=config.resampler_depth,
            heads=config.resampler_heads,
            dim_head=config.resampler_dim_head,
            num_latents=config.num_latents,
            max_frames=config.max_frames,
            ff_mult=config.resampler_ff_mult,
            grid_size=vision.grid_size if config.spatial_positions else None,
            grid_latents=config.grid_latents,
            grid_radius=config.resampler_grid_radius,
            global_latents=config.global_latents,
            global_latents_read_by=config.global_latents_read_by,
        )
        layers = find_decoder_layers(lm, config.decoder_layers_attr)
        self.cross_attn_layers = cross_attention_layer_indices(
            len(layers), every_n=config.cross_attn_every_n_layers, first=config.cross_attn_first_layer
        )
        self.cross_attn = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(
                    dim=dim,
                    media_dim=media_dim,
                    heads=config.cross_attn_heads,
                    dim_head=config.cross_attn_dim_head,
                    ff_mult=config.cross_attn_ff_mult,
                    only_attend_immediate_media=config.only_attend_immediate_media,
                )
                for i in self.cross_attn_layers
            }
        )
        for i in self.cross_attn_layers:
            run_before(layers[i], self._cross_attention_hook(str(i)))

        # <image> and <|endofchunk|> get rows of their own, used for input and output (tied), so
        # training them never touches the LM's embedding matrix.
        embeddings = lm.get_input_embeddings().weight.detach().float()
        init = embeddings.mean(0) + embeddings.std(0) * torch.randn(len(SPECIAL_TOKENS), dim)
        self.special_embeddings = nn.Parameter(init, requires_grad=config.train_special_token_embeddings)
        self._media: MediaState | None = None

    # --- training mode and parameters -------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen: dropout off whatever the adapters do
        self.vision.eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen backbones: what save_pretrained writes."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("lm.", "vision."))}

    # --- images -----------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, num_images: torch.Tensor) -> torch.Tensor:
        """pixel_values (b, m, [f,] 3, h, w), of which the first num_images[i] are real -> latents (b, m, l, d)."""
        if pixel_values.ndim == 5:
            pixel_values = pixel_values.unsqueeze(2)
        b, m, f = pixel_values.shape[:3]
        real = torch.arange(m, device=pixel_values.device)[None] < num_images[:, None].to(pixel_values.device)  # (b, m)
        images = pixel_values[real]  # (k, f, 3, h, w): padding images never reach the encoder
        # a batch of questions about one picture holds it many times (easy-VQA's test split: 9,673 questions,
        # 1,000 pictures): each distinct picture is encoded and resampled once
        distinct, copies = distinct_rows(images)  # (u, f, 3, h, w), (k,)
        tokens = self.vision(distinct.flatten(0, 1)).unflatten(0, (-1, f))  # (u, f, n, c)
        return self.resample(tokens, real, copies=copies)

    def resample(self, tokens: torch.Tensor, real: torch.Tensor, *, copies: torch.Tensor | None = None) -> torch.Tensor:
        """Vision tokens (u, f, n, c) -> latents (b, m, l, d), zeros where `real` is False. The i-th real image
        gets the latents of tokens[copies[i]] (default: of tokens[i])."""
        latents = self.resampler(tokens.unsqueeze(0).to(self.resampler.latents.dtype))[0]  # (u, l, d)
        out = latents.new_zeros(*real.shape, *latents.shape[1:])
        out[real] = latents if copies is None else latents[copies]
        return out

    # --- the language side ------------------------------------------------------------------
    def _cross_attention_hook(self, key: str):
        def cross_attend(hidden: torch.Tensor) -> torch.Tensor:
            media = self._media
            if media is None or media.latents is None:
                return hidden
            block = self.cross_attn[key]
            if key not in media.keys_values:
                media.keys_values[key] = block.attention.media_keys_values(media.latents)
            out = block(
                hidden.to(media.latents.dtype),
                keys_values=media.keys_values[key],
                media_index=media.media_index,
                latents_per_media=media.latents.shape[2],
            )
            return out.to(hidden.dtype)

        return cross_attend

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_special = input_ids[..., None] == self.special_ids  # (b, t, 2)
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(is_special.any(-1), 0))
        special = is_special.to(embeds.dtype) @ self.special_embeddings.to(embeds.dtype)
        return torch.where(is_special.any(-1, keepdim=True), special, embeds)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., d) -> logits over the LM vocabulary and the two special tokens."""
        logits = self.lm.get_output_embeddings()(hidden)
        special = (hidden @ self.special_embeddings.to(hidden.dtype).T).to(logits.dtype)
        if self.specials_follow_vocab:
            return torch.cat([logits, special], dim=-1)  # the usual layout: one copy, no scatter
        if self.vocab_size > self.lm_vocab_size:
            logits = F.pad(logits, (0, self.vocab_size - self.lm_vocab_size), value=torch.finfo(logits.dtype).min)
        return logits.index_copy(-1, self.special_ids, special)

    def media_index(self, input_ids: torch.Tensor, images_before: torch.Tensor | None = None) -> torch.Tensor:
        """(b, t): the 1-based index of the most recent image at or before each token; 0 before the first."""
        index = torch.cumsum(input_ids == self.image_token_id, dim=1)
        return index if images_before is None else index + images_before[:, None]

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_values: torch.Tensor | None = None,
        media: MediaState | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
        images_before: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
    ) -> dict:
        """input_ids (b, t) with one `<image>` per image -> {"hidden", "media", "loss"?, "example_losses"?, "cache"?}.

        Images come as `pixel_values` (b, m, [f,] 3, h, w) or an already encoded `media` state (generation,
        cached features). `images_before` (b,) counts images in earlier calls (decoding with a cache).
        Logits are left to the caller (`self.logits`) so training computes them only where there is a target.
        """
        if media is None:
            latents = None
            if pixel_values is not None:
                latents = self.encode_images(pixel_values, (input_ids == self.image_token_id).sum(1))
            media = MediaState(latents=latents)
        media.media_index = self.media_index(input_ids, images_before)
        self._media = media
        try:
            output = self.lm.base_model(
                inputs_embeds=self.embed(input_ids),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
            )
        finally:
            # Gradient checkpointing re-runs the hooks during backward: keep the media until the next call then.
            if not (self.training and torch.is_grad_enabled()):
                self._media = None
        result = {"hidden": output.last_hidden_state, "media": media}
        if use_cache:
            result["cache"] = output.cache
        if labels is not None:
            result["loss"], result["example_losses"] = self.loss(
                output.last_hidden_state, input_ids, labels, attention_mask, media.media_index, loss_weights
            )
        return result

    def loss_labels(self, input_ids, labels, attention_mask=None, media_index=None) -> torch.Tensor:
        """`labels` with -100 wherever there is nothing to learn: padding, image markers, and (unless the
        config says otherwise) text before the first image."""
        labels = labels.masked_fill(input_ids == self.image_token_id, -100)
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        if not self.config.loss_on_text_before_first_image:
            media_index = self.media_index(input_ids) if media_index is None else media_index
            labels = labels.masked_fill(media_index == 0, -100)
        return labels

    def loss(self, hidden, input_ids, labels, attention_mask, media_index, loss_weights=None):
        """Next-token cross-entropy on target text, never on padding or image markers -> (the mean over target
        tokens, weighted by `loss_weights` per example; each example's summed token losses (b,), detached, to
        log the loss by data source)."""
        targets = self.loss_labels(input_ids, labels, attention_mask, media_index)[:, 1:]
        selected = targets != -100  # (b, t-1)
        example_losses = hidden.new_zeros(len(hidden), dtype=torch.float32)
        if not selected.any():
            return hidden.sum() * 0.0, example_losses  # nothing to learn from in this batch; keeps the graph valid
        logits = self.logits(hidden[:, :-1][selected])  # only where there is a target: saves the vocab matmul
        losses = F.cross_entropy(logits.float(), targets[selected], reduction="none")  # (n,): one per target
        example_losses.index_add_(0, selected.nonzero()[:, 0], losses.detach())
        if loss_weights is None:
            return losses.mean(), example_losses
        weights = loss_weights[:, None].expand_as(targets)[selected].to(losses.dtype)
        return (losses * weights).sum() / weights.sum().clamp_min(1e-8), example_losses

    # --- save and load ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write the adapter weights (safetensors) and the config that names the backbones: no LM or vision weights.

        `dtype` (e.g. torch.bfloat16) halves the file for shipping; loading casts back to the model's dtype.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in self.adapter_state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(tensors, str(path)))
        meta = {
            "format_version": CONFIG_VERSION,
            "model": to_dict(self.config),
            "backbones": self.backbone_signature(),
        }
        atomic_write(directory / CONFIG_FILE, lambda path: path.write_text(json.dumps(meta, indent=2)))
        return directory

    def backbone_signature(self) -> dict:
        """What the adapters were trained against: checked on load to catch a checkpoint for other backbones."""
        return {
            "lm": self.config.lm,
            "vision": self.config.vision,
            "lm_hidden_size": hidden_size(self.lm),
            "lm_num_layers": len(find_decoder_layers(self.lm, self.config.decoder_layers_attr)),
            "vision_width": self.vision.width,
            "vision_grid": list(self.vision.grid_size),
        }

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "VisionLanguageModel":
        """Rebuild a saved model: backbones from the names in its config, adapters from its safetensors file."""
        directory = Path(directory)
        config = read_config(directory, **overrides)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():  # before the backbones load
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}: not a saved vlm model")
        model = build_model(config)
        model.load_adapters(weights, expected=read_saved_meta(directory).get("backbones", {}))
        return model

    def load_adapters(self, weights: Path, *, expected: dict | None = None, new_token_channels: bool = False,
                      new_blocks: bool = False, new_global_latents: bool = False) -> list[int]:
        """Load adapter weights saved by `save_pretrained`, checking they were trained for these backbones.

        `new_token_channels`: the adapters were trained on image tokens without channels this model appends at
        their end (`half_stride_features` or `quarter_stride_features` turned on for a run's init_from). The token
        projection's columns for them start at zero, so the model computes exactly what the saved one did until
        training moves them.
        `new_blocks`: cross-attention blocks at decoder layers the saved adapters have none for keep their fresh
        weights (a run's init_from with a lower `cross_attn_first_layer`); their gates start at zero, so again the
        model computes what the saved one did. Returns the layers of those fresh blocks.
        `new_global_latents`: the adapters were trained without the resampler's global latents; they start fresh
        (the decoder then reads them beside the grid's, so unlike the two above this changes what the model computes).
        """
        found = self.backbone_signature()
        ignored = ("lm", "vision", "vision_width") if new_token_channels else ("lm", "vision")
        mismatched = {k: (v, found.get(k)) for k, v in (expected or {}).items() if k in found and found[k] != v and k not in ignored}
        if mismatched:
            details = "; ".join(f"{k}: checkpoint expects {a}, backbones have {b}" for k, (a, b) in mismatched.items())
            raise ValueError(f"{weights.parent} was trained for other backbones ({expected.get('lm')}, {expected.get('vision')}): {details}")
        state = read_adapter_weights(weights)
        own = self.adapter_state_dict()
        if new_token_channels and PROJECTION in state:  # without it, the missing-key error below says so
            state[PROJECTION] = _widen_columns(state[PROJECTION], own[PROJECTION])
        missing = sorted(set(own) - set(state))
        fresh_layers = []
        if new_blocks:
            saved_blocks = {key.split(".")[1] for key in state if key.startswith("cross_attn.")}
            fresh_layers = [i for i in self.cross_attn_layers if str(i) not in saved_blocks]
            fresh = tuple(f"cross_attn.{i}." for i in fresh_layers)
            missing = [key for key in missing if not key.startswith(fresh)]
        if new_global_latents:
            missing = [key for key in missing if key != GLOBAL_LATENTS]
        unexpected = sorted(set(state) - set(own))
        wrong_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"{weights} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong_shape[:5]]}"
            )
        self.load_state_dict(state, strict=False)
        return fresh_layers


def read_config(directory: Path, **overrides) -> ModelConfig:
    meta = read_saved_meta(directory)
    return from_dict(ModelConfig, {**meta.get("model", {}), **overrides}, where="model")


def read_saved_meta(directory: Path) -> dict:
    """A saved model's config.json as written by `save_pretrained`: its format version, model config and backbones."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: not a saved vlm model")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    version = meta.get("format_version", 0)
    if version > CONFIG_VERSION:
        raise ConfigError(f"{path} was written by a newer vlm (format {version}; this one reads up to {CONFIG_VERSION}): upgrade vlm")
    return meta


def read_adapter_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter.safetensors file; a missing or corrupt file is a clear error."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{Path(weights).parent} has no {WEIGHTS_FILE}: not a saved vlm model")
    try:
        return load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types on a corrupt file
        raise ValueError(f"cannot read {weights}: the file is corrupt or not safetensors ({error})") from None


PROJECTION = "resampler.project.weight"  # (dim, token channels): the one adapter weight that sees the tokens' width
GLOBAL_LATENTS = "resampler.global_latents"


def _widen_columns(saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """`saved` (rows, k) -> `own`'s shape (rows, n >= k): the saved columns first, zeros after."""
    if saved.shape[0] != own.shape[0] or saved.shape[1] > own.shape[1]:
        raise ValueError(f"{PROJECTION}: the saved {tuple(saved.shape)} cannot start this model's {tuple(own.shape)} "
                         "(the new token channels must come after the saved ones)")
    widened = torch.zeros_like(own, dtype=saved.dtype)
    widened[:, : saved.shape[1]] = saved
    return widened


def build_model(config: ModelConfig) -> VisionLanguageModel:
    """Load the backbones a config names and put fresh adapters between them."""
    lm, tokenizer = backbones.load_language_model(config.lm, dtype=getattr(torch, config.lm_dtype))
    loaded = backbones.load_vision_model(config.vision, weights=config.vision_weights)
    vision = VisionEncoder(
        model=loaded.model.to(getattr(torch, config.vision_dtype)),
        family=loaded.family,
        image_size=config.image_size or loaded.image_size,
        mean=loaded.mean,
        std=loaded.std,
        colour_grid=config.colour_grid,
        half_stride_features=config.half_stride_features,
        quarter_stride_features=config.quarter_stride_features,
    )
    return VisionLanguageModel(config, vision=vision, lm=lm, tokenizer=tokenizer)

