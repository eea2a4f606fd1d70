"""When the model writes a button's colour, does its cross-attention look at the button's column?

    python benchmarks/probe_column_attention.py                 # the shipped model, 60 pages in pix2code's style
    python benchmarks/probe_column_attention.py --model M --pages 100 --vocabulary full --style sketch

Generated pages (held-out seeds) are laid out, so each button inside a column has a box, placed in the picture
as `render` places it. The page's reference DSL is fed after its picture, as in training, and at the position
that predicts the token deciding a button's colour (` btn-` is shared by every colour) each cross-attention
block's attention over the image's latents is read, averaged over heads. With `grid_latents` latent i starts
from the encoder's cell i, so a latent has a place: the share of the row's attention (the latents inside any
column of the button's row) that falls inside the button's own column is reported per block, beside chance
(that column's share of the row's latents), for the buttons whose colour the model puts first and for the
others; the row's share of all the attention, beside the row's share of the latents; and the share on the
`global_latents`, which have no place. Without `resampler_grid_radius` the resampler's latents attend to the
whole picture, so a latent is its cell only to a first approximation; with it, a latent reads only its cell's
neighbourhood. A share at chance where the colour is wrong says the model looked at the wrong column, or at none.
"""

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

import vlm
from vlm import prompts
from vlm.model import VisionLanguageModel
from vlm.sketch import generate_page, render, to_dsl
from vlm.sketch.browser import CSS_WIDTH
from vlm.sketch.dsl import TOKENS
from vlm.sketch.layout import Box, layout
from vlm.sketch.render import DEFAULT_SIZE, placement

COLUMNS = ("single", "double", "triple", "quadruple")
COLOURS = tuple(token for token in TOKENS if token.startswith("btn-") and token not in ("btn-active", "btn-inactive"))
HELD_OUT_SEED = 97_000_000  # apart from training's seeds (0-30,020,000), the eval sets' and the other probes'


@dataclass
class Button:
    word: str  # btn-green, ...
    right: bool  # the model's most likely token at the deciding position is this colour's
    shares: dict[str, tuple[float, ...]]  # block -> (own column's share of the row's attention, chance,
    #                                          the row's share of all the attention, chance, global latents' share)


def latent_cells(net: VisionLanguageModel) -> torch.Tensor:
    """(latents, 2) centres (x, y) of the latents' cells, as fractions of the picture's width and height; NaN for
    the global latents after the grid's when the decoder reads them, which have no place (and so lie inside no box)."""
    if not net.config.grid_latents:
        raise ValueError("this probe needs a model with grid_latents: only then is latent i the encoder's cell i")
    rows, cols = net.vision.grid_size
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    return torch.cat((torch.stack((x.flatten(), y.flatten()), dim=1), torch.full((net.resampler.num_output_latents - rows * cols, 2), float("nan"))))


def inside(cells: torch.Tensor, box: Box, scale: float, left: float, top: float, size: tuple[int, int]) -> torch.Tensor:
    """(latents,) bool: the cells whose centre lies in `box` as drawn in a picture of `size`."""
    x0, y0 = (left + box.x * scale) / size[0], (top + box.y * scale) / size[1]
    x1, y1 = (left + (box.x + box.w) * scale) / size[0], (top + (box.y + box.h) * scale) / size[1]
    return (cells[:, 0] >= x0) & (cells[:, 0] < x1) & (cells[:, 1] >= y0) & (cells[:, 1] < y1)


def colour_position(tokenizer) -> int:
    """How many tokens every colour's word shares before the one that decides the colour."""
    pieces = [tokenizer.encode(" " + word, add_special_tokens=False) for word in COLOURS]
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == pieces[0][shared] for p in pieces):
        shared += 1
    return shared


def attention_by_block(net: VisionLanguageModel, input_ids: torch.Tensor,
                       pixels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """({block: (t, latents) attention averaged over heads}, logits (t, vocab)) for one sample, teacher-forced."""
    seen = {}

    def keep(key):
        def hook(module, args, kwargs, output):
            x, (k, _) = args[0], kwargs["keys_values"]
            q = module.to_q(module.norm(x)).unflatten(-1, (module.heads, -1)).transpose(1, 2)  # (1, h, t, dh)
            weights = (q @ k.to(q.dtype).transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # (1, h, t, latents)
            seen[key] = weights[0].mean(0).float()
        return hook

    handles = [block.attention.register_forward_hook(keep(key), with_kwargs=True)
               for key, block in net.cross_attn.items()]
    try:
        with torch.no_grad():
            hidden = net(input_ids, pixel_values=pixels)["hidden"][0]  # (t, d)
            logits = net.logits(hidden).float()
    finally:
        for handle in handles:
            handle.remove()
    return seen, logits


def page_buttons(net: VisionLanguageModel, seed: int, *, vocabulary: str, style: str) -> list[Button]:
    """Every coloured button inside a column of generated page `seed`, drawn in `style`."""
    tokenizer = net.tokenizer
    page = generate_page(seed, vocabulary=vocabulary)
    size = DEFAULT_SIZE[style]
    boxes = layout(page.tree, page.texts, width=CSS_WIDTH)
    where = placement(boxes, style, size)
    dsl = to_dsl(page.tree)
    words = [w for w in dsl.split() if w not in ("{", "}", ",")]
    if words != [box.token for box in boxes.boxes]:
        raise ValueError(f"page {seed}: the layout's boxes do not follow the DSL's elements")
    encoded = prompts.encode(prompts.sketch_to_html(dsl), tokenizer, max_length=None)
    input_ids = torch.tensor([encoded.input_ids])  # (1, t)
    vision_dtype = next(net.vision.parameters()).dtype
    pixels = net.vision.preprocess(render(page, style=style, seed=seed))[None, None].to(vision_dtype)
    attention, logits = attention_by_block(net, input_ids, pixels)
    cells, shared = latent_cells(net), colour_position(tokenizer)

    targets = [i for i, label in enumerate(encoded.labels) if label != prompts.IGNORE_INDEX]  # positions of targets
    buttons, start, element = [], 0, 0
    column, row, columns_of_row = None, None, defaultdict(list)
    for word in dsl.split():
        pieces = tokenizer.encode(" " + word, add_special_tokens=False)
        if [encoded.input_ids[i] for i in targets[start : start + len(pieces)]] != pieces:
            raise ValueError(f"this tokenizer does not write the DSL word by word (at {word!r})")
        if word not in ("{", "}", ","):
            box = boxes.boxes[element]
            element += 1
            if word == "row":
                row = box
            elif word in COLUMNS:
                column = box
                columns_of_row[id(row)].append(box)
            elif word in COLOURS and box.parent in COLUMNS:
                deciding = targets[start + shared]  # the query one before it predicts it
                query = deciding - 1
                right = logits[query].argmax().item() == encoded.input_ids[deciding]
                buttons.append((word, right, query, column, row))
        start += len(pieces)

    out = []
    for word, right, query, column, row in buttons:
        row_cells = torch.zeros(len(cells), dtype=torch.bool)
        for other in columns_of_row[id(row)]:
            row_cells |= inside(cells, other, *where, size)
        own = inside(cells, column, *where, size)
        if not own.any() or not (row_cells & ~own).any():
            continue  # a column narrower than a cell, or alone in its row: no choice to make
        shares = {}
        for key, weights in attention.items():
            in_row = weights[query][row_cells].sum().item()
            shares[key] = (weights[query][own].sum().item() / in_row, own.sum().item() / row_cells.sum().item(),
                           in_row, row_cells.float().mean().item(), weights[query][cells[:, 0].isnan()].sum().item())
        out.append(Button(word, right, shares))
    return out


def summary(buttons: list[Button]) -> list[tuple]:
    """Per block: (block, own column's share: all, where right, where wrong, chance; the row's share, chance;
    the global latents' share)."""
    if not buttons:
        raise ValueError("no coloured button in a column beside other columns on these pages: "
                         "try more --pages, or the pix2code vocabulary")
    def mean(values):
        return sum(values) / len(values) if values else float("nan")
    rows = []
    for key in buttons[0].shares:
        share, chance, row, row_chance, global_share = ([b.shares[key][i] for b in buttons] for i in range(5))
        right = [b.shares[key][0] for b in buttons if b.right]
        wrong = [b.shares[key][0] for b in buttons if not b.right]
        rows.append((key, mean(share), mean(right), mean(wrong), mean(chance), mean(row), mean(row_chance),
                     mean(global_share)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved model folder; default: the shipped model")
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--vocabulary", choices=("pix2code", "full"), default="pix2code")
    parser.add_argument("--style", choices=("pix2code", "sketch", "wireframe"), default="pix2code")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.pages < 1:
        parser.error(f"--pages must be >= 1, got {args.pages}")
    model = vlm.load(args.model, dtype=args.dtype)
    start, buttons = time.perf_counter(), []
    for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + args.pages):
        buttons += page_buttons(model.model, seed, vocabulary=args.vocabulary, style=args.style)
    try:
        rows = summary(buttons)
    except ValueError as e:
        raise SystemExit(f"probe_column_attention.py: {e}") from None
    right = sum(b.right for b in buttons)
    print(f"model: {args.model or 'shipped'}  {args.pages} pages ({args.vocabulary}, {args.style}): {len(buttons)} "
          f"buttons in a column beside others, colour first-token right {right} ({time.perf_counter() - start:.0f} s)")
    print("block  own column's share of the row's  where right  where wrong  chance  row's share of all  chance"
          "  global latents' share")
    for key, share, where_right, where_wrong, chance, row, row_chance, global_share in rows:
        print(f"{key:>5}  {share:34.3f}  {where_right:11.3f}  {where_wrong:11.3f}  {chance:6.3f}  "
              f"{row:18.3f}  {row_chance:6.3f}  {global_share:21.3f}")


if __name__ == "__main__":
    main()
