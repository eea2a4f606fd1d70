"""Gated cross-attention dense blocks: how text tokens read the image latents (Flamingo, section 2.2).

Each block is added to the frozen LM's residual stream through tanh(gate), with gates starting
at 0, so an untrained model is exactly the frozen LM.
"""

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from vlm.resampler import feed_forward


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the latents of their own image only.

    `media_index` (b, t) holds, for every text token, the 1-based index of the image it sees
    (the most recent `<image>` at or before it), 0 for text before the first image.
    """

    def __init__(self, *, dim: int, media_dim: int, heads: int, dim_head: int, only_attend_immediate_media: bool = True):
        super().__init__()
        self.heads = heads
        self.only_attend_immediate_media = only_attend_immediate_media
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(media_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def media_keys_values(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # latents: (b, m, l, d) -> keys, values: (b, h, m*l, dh); computed once per image, reused per step
        k, v = self.to_kv(rearrange(latents, "b m l d -> b (m l) d")).chunk(2, dim=-1)
        return tuple(rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (k, v))

    def forward(self, x: torch.Tensor, *, keys_values, media_index: torch.Tensor, latents_per_media: int) -> torch.Tensor:
        k, v = keys_values
        q = rearrange(self.to_q(self.norm(x)), "b t (h d) -> b h t d", h=self.heads)
        key_media = torch.arange(k.shape[2], device=x.device) // latents_per_media + 1  # (m*l,), 1-based
        query_media = media_index[:, :, None]  # (b, t, 1)
        if self.only_attend_immediate_media:
            allowed = key_media == query_media
        else:
            allowed = key_media <= query_media
        has_media = media_index > 0  # (b, t)
        # Rows with no image would softmax over nothing (NaN); let them see everything, then zero them.
        allowed = allowed | ~has_media[:, :, None]
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed[:, None])
        out = self.to_out(rearrange(out, "b h t d -> b t (h d)"))
        return out.masked_fill(~has_media[:, :, None], 0.0)


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(a) * cross_attention(x), then + tanh(b) * feed_forward, only on tokens that follow an image.

    Text with no image before it is left exactly as the frozen LM computes it (the feed-forward too),
    so text-only prompts behave as the bare LM whatever the gates.
    """

    def __init__(self, *, dim: int, media_dim: int, heads: int, dim_head: int, ff_mult: int, only_attend_immediate_media: bool = True):
        super().__init__()
        self.attention = MaskedCrossAttention(
            dim=dim, media_dim=media_dim, heads=heads, dim_head=dim_head, only_attend_immediate_media=only_attend_immediate_media
        )
        self.attention_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, *, keys_values, media_index: torch.Tensor, latents_per_media: int) -> torch.Tensor:
        has_media = (media_index > 0)[:, :, None]
        x = x + self.attention(x, keys_values=keys_values, media_index=media_index, latents_per_media=latents_per_media) * self.attention_gate.tanh()
        return x + (self.ff(x) * self.ff_gate.tanh()).masked_fill(~has_media, 0.0)
