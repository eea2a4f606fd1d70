"""Perceiver Resampler: a fixed set of learned latents reads a variable number of image tokens.

As in Flamingo (Alayrac et al. 2022, section 2.1): the latents cross-attend to the image tokens,
with keys and values taken from the image tokens concatenated with the latents themselves.
"""

import torch
from einops import rearrange, reduce, repeat
from torch import nn
from torch.nn import functional as F


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    def __init__(self, *, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        # media: (b, n_media_tokens, d), latents: (b, n_latents, d); mask: (n_latents, n_media_tokens + n_latents),
        # True where a latent may attend, or None for everywhere
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((media, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PerceiverResampler(nn.Module):
    """Maps each image's tokens (b, m, f, n, media_dim) to latents (b, m, num_latents [+ global_latents], dim).

    m images per sample, f frames per image (1 for a still image), n tokens per frame.
    `grid_size` (rows, cols) of the encoder's token grid adds learned 2-D positions to the tokens,
    so the latents can tell where on the page a feature was (a CNN's last feature map carries
    little position information of its own).

    `grid_latents` (needs `grid_size` and one latent per grid cell) starts latent i from cell i's token
    (the mean over frames) instead of from the learned latent alone. Learned latents read content wherever it
    is: run 2 of the default model's latents settled on a few cells per head, and the decoder could place
    pix2code's buttons but not say which one was green. A latent that is its cell keeps what is where.

    `grid_radius` r (needs `grid_latents`) keeps each latent to its place: latent i reads only the tokens of the
    cells within r rows and r columns of cell i (in every frame) and itself, not the other latents. Without it a
    latent reads the whole picture, and the shipped model's decoder reads colours from latents that summarise
    the page rather than from the button's own cell (`benchmarks/probe_column_attention.py`).

    `global_latents` g (needs `grid_latents`) appends g learned latents after the grid's that read the whole
    picture and every latent, as Flamingo's do. Kept to their places by `grid_radius`, the grid latents lose what
    is read across a row or the page (a row's column kinds, how many buttons): these carry it beside them.

    `global_latents_read_by` says who reads them: "decoder" (they are output after the grid's latents) or "grid"
    (the grid latents read them as well as their own cells, and only the grid's latents are output). With
    "decoder" the default model's decoder read a button's colour from the global latents, which have no place
    (run 20); with "grid" what the page as a whole says reaches the decoder only through the latents of places.
    """

    def __init__(
        self,
        *,
        dim: int,
        media_dim: int,
        depth: int = 2,
        heads: int = 8,
        dim_head: int = 64,
        num_latents: int = 64,
        max_frames: int = 8,
        ff_mult: int = 4,
        grid_size: tuple[int, int] | None = None,
        grid_latents: bool = False,
        grid_radius: int | None = None,
        global_latents: int = 0,
        global_latents_read_by: str = "decoder",
    ):
        super().__init__()
        if grid_latents and (grid_size is None or num_latents != grid_size[0] * grid_size[1]):
            grid = "no grid" if grid_size is None else f"a {grid_size[0]}x{grid_size[1]} grid of {grid_size[0] * grid_size[1]} cells"
            raise ValueError(f"grid_latents needs one latent per cell of the image's token grid: {num_latents} latents, {grid}")
        if grid_radius is not None and (not grid_latents or grid_radius < 0):
            raise ValueError(f"grid_radius needs grid_latents and a radius >= 0, got {grid_radius} (grid_latents={grid_latents})")
        if global_latents < 0 or (global_latents and not grid_latents):
            raise ValueError(f"global_latents needs grid_latents and a count >= 0, got {global_latents} (grid_latents={grid_latents})")
        if global_latents_read_by not in ("decoder", "grid"):
            raise ValueError(f"global_latents_read_by must be 'decoder' or 'grid', got {global_latents_read_by!r}")
        self.grid_latents = grid_latents
        self.num_latents = num_latents
        self.global_latents_read_by = global_latents_read_by
        near = None
        if grid_radius is not None:  # (latents, cells): cell j within grid_radius rows and columns of latent i's cell
            row, col = torch.arange(num_latents) // grid_size[1], torch.arange(num_latents) % grid_size[1]
            near = ((row[:, None] - row[None]).abs() <= grid_radius) & ((col[:, None] - col[None]).abs() <= grid_radius)
        self.register_buffer("local", near, persistent=False)
        self.project = nn.Linear(media_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.global_latents = nn.Parameter(torch.randn(global_latents, dim) * 0.02) if global_latents else None
        self.frame_embeddings = nn.Parameter(torch.zeros(max_frames, dim))
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        if self.grid_size is not None:
            rows, cols = self.grid_size
            self.row_embeddings = nn.Parameter(torch.randn(rows, dim) * 0.02)
            self.col_embeddings = nn.Parameter(torch.randn(cols, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, heads=heads, dim_head=dim_head), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        if media.ndim == 4:  # (b, m, n, d): still images are one frame each
            media = media.unsqueeze(2)
        b, m, f, n, _ = media.shape
        if f > self.frame_embeddings.shape[0]:
            raise ValueError(f"{f} frames per media item, but the resampler has time embeddings for {self.frame_embeddings.shape[0]}")
        x = self.project(media)
        if self.grid_size is not None:
            rows, cols = self.grid_size
            if n != rows * cols:
                raise ValueError(f"image has {n} tokens, but the resampler was built for a {rows}x{cols} grid")
            position = rearrange(self.row_embeddings[:, None] + self.col_embeddings[None, :], "r c d -> (r c) d")
            x = x + position
        x = x + self.frame_embeddings[:f, None]
        latents = repeat(self.latents, "l d -> bm l d", bm=b * m)
        if self.grid_latents:
            latents = latents + reduce(x, "b m f n d -> (b m) n d", "mean")
        if self.global_latents is not None:  # (bm, cells + g, d): the grid's latents first, so latent i is still cell i
            latents = torch.cat((latents, repeat(self.global_latents, "g d -> bm g d", bm=b * m)), dim=1)
        x = rearrange(x, "b m f n d -> (b m) (f n) d")
        mask = None if self.local is None else self._local_mask(frames=f)
        for attention, ff in self.layers:
            latents = attention(x, latents, mask=mask) + latents
            latents = ff(latents) + latents
        if self.global_latents_read_by == "grid":  # (bm, cells, d): the decoder sees the places alone
            latents = latents[:, : self.num_latents]
        return rearrange(self.norm(latents), "(b m) l d -> b m l d", b=b)

    @property
    def num_output_latents(self) -> int:
        """How many latents per image the decoder sees: the grid's, then the global latents if it reads them."""
        g = 0 if self.global_latents is None else len(self.global_latents)
        return self.num_latents + (g if self.global_latents_read_by == "decoder" else 0)

    def _local_mask(self, *, frames: int) -> torch.Tensor:
        """(cells + g, frames*cells + cells + g): a grid latent reads its cells in every frame, then itself alone
        (and the global latents, if they are read by the grid); a global latent reads everything."""
        cells, device = len(self.local), self.local.device
        g = 0 if self.global_latents is None else len(self.global_latents)
        grid_rows = torch.cat((repeat(self.local, "l n -> l (f n)", f=frames), torch.eye(cells, dtype=torch.bool, device=device),
                               torch.full((cells, g), self.global_latents_read_by == "grid", device=device)), dim=1)
        global_rows = torch.ones(g, grid_rows.shape[1], dtype=torch.bool, device=device)
        return torch.cat((grid_rows, global_rows))
