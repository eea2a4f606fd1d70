"""Where a picture's detail can get lost on its way to the decoder: measured on pix2code's screenshots.

    python benchmarks/probe_image_path.py --data ../shared/data/pix2code-web                 # the shipped model
    python benchmarks/probe_image_path.py --data ../shared/data/pix2code-web --model runs/default/final

1. Colour in the frozen encoder's tokens. A grid cell whose pixels hold at least 40 of one button colour
   (within 60, summed over R, G and B, of Bootstrap's green, orange or red) is labelled with it. A linear
   classifier fit on the cells of training pages predicts the colour of validation pages' cells from the
   encoder's features alone: if it is right, the colour reached the adapters.
2. Where the resampler's latents read. For each layer and head, each latent's favourite cell (its largest
   attention weight among the image's tokens) on each validation page: how often a latent reads the same
   place on every page (its most common cell), how many of the grid's cells some latent reads, and, with
   `grid_latents`, how often latent i reads its own cell i. Latents that follow content wherever it is
   can say a page has a green button, not which one.
"""

import argparse
import time

import torch
from einops import rearrange
from probe_element_features import linear_probe  # benchmarks/ is on the path when a script here runs

import vlm
from vlm.sketch import pix2code_split

BUTTON_COLOURS = {"green": (92, 184, 92), "orange": (240, 173, 78), "red": (217, 83, 79)}  # Bootstrap 3
NEAR = 60  # summed absolute RGB difference that still counts as the colour
MIN_PIXELS = 40  # of a cell's pixels, to label the cell


def cell_colours(pixels: torch.Tensor, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """uint8 (3, h, w) -> [(cell index, colour index)] for cells holding one button colour."""
    rows, cols = grid
    labelled = []
    for index, rgb in enumerate(BUTTON_COLOURS.values()):
        near = (pixels.int() - torch.tensor(rgb).view(3, 1, 1)).abs().sum(0) < NEAR  # (h, w)
        counts = rearrange(near.float(), "(r i) (c j) -> (r c) (i j)", r=rows, c=cols).sum(-1)  # (cells,)
        labelled += [(cell, index) for cell in torch.nonzero(counts >= MIN_PIXELS).flatten().tolist()]
    return labelled


def favourite_cells(model, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Normalised images (b, 3, h, w) -> per resampler layer, each latent's favourite cell: (b, heads, latents)."""
    captured = []
    hooks = [attention.register_forward_pre_hook(lambda module, args: captured.append((module, *args)))
             for attention, _ in model.resampler.layers]
    with torch.no_grad():
        model.resampler(model.vision(pixels)[:, None])  # (b, 1, cells, width): one image each
    for hook in hooks:
        hook.remove()
    favourites = []
    for attention, media, latents in captured:  # media (b, cells, d), latents (b, n, d)
        q = attention.to_q(attention.norm_latents(latents))
        k = attention.to_kv(attention.norm_media(media))[..., : q.shape[-1]]  # keys of the image's tokens
        q, k = (rearrange(t, "b n (h d) -> b h n d", h=attention.heads) for t in (q, k))
        favourites.append((q @ k.transpose(-1, -2)).argmax(-1))  # softmax keeps the order: (b, heads, latents)
    return favourites


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="pix2code's web set (a folder with train/)")
    parser.add_argument("--model", help="a saved model folder; default: vlm.load()'s default model")
    parser.add_argument("--train-pages", type=int, default=300, help="training pages for the colour probe")
    args = parser.parse_args()
    started = time.perf_counter()
    model = vlm.load(args.model).model.eval()
    train, validation = pix2code_split(args.data)
    grid, cells = model.vision.grid_size, model.vision.grid_size[0] * model.vision.grid_size[1]

    def features_and_labels(samples):
        x, y, pixels = [], [], []
        for sample in samples:
            raw = model.vision.resize(sample.load_image())  # (3, h, w) uint8
            pixels.append(model.vision.normalize(raw))
            with torch.no_grad():
                tokens = model.vision(pixels[-1][None])[0]  # (cells, width)
            for cell, colour in cell_colours(raw, grid):
                x.append(tokens[cell].float())
                y.append(colour)
        return torch.stack(x), torch.tensor(y), torch.stack(pixels)

    train_x, train_y, _ = features_and_labels(train[: args.train_pages])
    test_x, test_y, pixels = features_and_labels(validation)
    predicted = linear_probe(train_x, train_y, test_x, len(BUTTON_COLOURS), weight_decay=1e-3, max_iter=500)
    accuracy = (predicted == test_y).float().mean().item()
    print(f"model: {args.model or 'the shipped default'}; {args.train_pages} training pages, "
          f"{len(validation)} validation pages")
    print(f"\nbutton colour of a cell from the frozen encoder's features (linear probe; chance {1 / len(BUTTON_COLOURS):.2f})")
    print(f"{'cells fit':>9} {'cells tested':>12} {'accuracy':>8}")
    print(f"{len(train_y):9d} {len(test_y):12d} {accuracy:8.3f}")

    print(f"\nwhere the resampler's latents read ({cells} cells; {model.resampler.latents.shape[0]} latents)")
    print(f"{'layer':>5} {'same cell on every page':>23} {'cells read':>10} {'own cell':>8}")
    grid_latents = model.resampler.grid_latents
    for layer, favourite in enumerate(favourite_cells(model, pixels)):  # (pages, heads, latents)
        usual = favourite.mode(dim=0).values  # (heads, latents): each latent's most common cell
        same = (favourite == usual).float().mean().item()
        read = sum(page_head.unique().numel() for page_head in favourite.flatten(0, 1)) / favourite[:, :, 0].numel()
        own = (favourite == torch.arange(favourite.shape[-1])).float().mean().item() if grid_latents else float("nan")
        print(f"{layer:5d} {same:23.2f} {read:10.1f} {own:8.2f}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
