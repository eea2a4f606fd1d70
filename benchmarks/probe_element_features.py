"""Can the frozen encoder's features tell a page's elements apart? A linear probe at each element's cell.

    python benchmarks/probe_element_features.py                      # the shipped model's encoder and input size
    python benchmarks/probe_element_features.py --image-size 576 1024         # the same encoder at twice the size

Generated pages (held-out seeds, each drawn in one of the sketch, wireframe and pix2code styles) are laid out,
so each element inside a column, card or form has a box, placed in the picture as `render` places it (the
sketch style's tilt of up to 2.5 degrees aside). For every such element in the picture the encoder's feature map is
read at the cell holding the box's centre: the model's own tokens (the last map, stride 32 for EfficientNet) and
the stride-16 and stride-8 stages before them (`half_stride_features`, `quarter_stride_features`). A linear
classifier fit on the training pages' elements names the element (`big-title`, `btn-green`, `radio`, ...) on the
test pages. An element the probe cannot name from its cell is
one the adapters must find from context, if they can; how many elements share a cell says how much a cell mixes.
`--image-size` runs the same frozen encoder at another input size, to see what a larger one would give.
"""

import argparse
import random
import time
from collections import defaultdict

import torch
from torch.nn import functional as F

import vlm
from vlm.sketch import generate_page, render
from vlm.sketch.browser import CSS_WIDTH
from vlm.sketch.dsl import is_container
from vlm.sketch.layout import layout
from vlm.sketch.render import DEFAULT_SIZE, placement
from vlm.vision import VisionEncoder, stage_at_stride_fraction

STYLES = ("sketch", "wireframe", "pix2code")
OUTSIDE_COLUMNS = ("header", "nav", "footer")  # bars and footers: the same few elements on every page
TRAIN_SEED, TEST_SEED = 95_000_000, 96_000_000  # apart from training's seeds (0-30,020,000) and the eval sets'


def feature_maps(vision, image) -> dict[str, torch.Tensor]:
    """A picture -> {name: (channels, rows, cols)}: a timm CNN's tokens and its stages at 1/2 and 1/4 of their stride."""
    encoder = vision.model
    pixels = vision.preprocess(image)[None].to(next(encoder.parameters()).dtype)
    stages = [stage_at_stride_fraction(encoder, k) for k in (2, 4)]
    with torch.no_grad():  # one pass: the last map (forward_features') and the finer stages on the way
        last, finer = encoder.forward_intermediates(pixels, indices=sorted(stages))
    maps = {f"tokens, stride {vision.image_size[0] // last.shape[2]}": last[0].float()}
    for fine in sorted(finer, key=lambda m: m.shape[2]):  # stride 16, then 8 for EfficientNet
        maps[f"stride {vision.image_size[0] // fine.shape[2]}"] = fine[0].float()
    return maps


def elements(vision, seeds) -> tuple[dict[str, list[torch.Tensor]], list[str], dict[str, list[int]]]:
    """Per feature map, each element's cell feature; the elements' tokens; per map, elements per occupied cell."""
    features, tokens, cells = defaultdict(list), [], defaultdict(lambda: defaultdict(int))
    for seed in seeds:
        page = generate_page(seed)
        style = random.Random(seed).choice(STYLES)
        width, height = DEFAULT_SIZE[style]
        boxes = layout(page.tree, page.texts, width=CSS_WIDTH)
        scale, left, top = placement(boxes, style, (width, height))  # the sketch's slight tilt is not followed
        maps = feature_maps(vision, render(page, style=style, seed=seed))
        for box in boxes.boxes:
            x, y = (left + (box.x + box.w / 2) * scale) / width, (top + (box.y + box.h / 2) * scale) / height
            if is_container(box.token) or box.parent in OUTSIDE_COLUMNS:
                continue
            tokens.append(box.token)
            for name, grid in maps.items():
                row, col = min(int(y * grid.shape[1]), grid.shape[1] - 1), min(int(x * grid.shape[2]), grid.shape[2] - 1)
                features[name].append(grid[:, row, col])
                cells[name][seed, row, col] += 1
    return features, tokens, {name: list(counts.values()) for name, counts in cells.items()}


def linear_probe(train_x, train_y, test_x, classes: int, *, weight_decay: float, max_iter: int = 300) -> torch.Tensor:
    """Fit a linear classifier on standardised (train_x, train_y) with L-BFGS; the predicted classes of test_x."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classifier = torch.nn.Linear(train_x.shape[1], classes)
    optimiser = torch.optim.LBFGS(classifier.parameters(), max_iter=max_iter)

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(classifier(train_x), train_y) + weight_decay * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return classifier(test_x).argmax(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved model folder (its encoder and input size); default: the shipped model")
    parser.add_argument("--train-pages", type=int, default=1000)
    parser.add_argument("--test-pages", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="the probe's L2 penalty")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="run the encoder at this input size instead of the model's")
    args = parser.parse_args()
    if args.train_pages < 1 or args.test_pages < 1:
        parser.error("--train-pages and --test-pages must be at least 1")
    started = time.perf_counter()
    vision = vlm.load(args.model).model.vision.eval()
    if vision.family != "timm":
        parser.error("this probe reads a timm CNN's stages; the model's encoder is an open_clip ViT")
    if args.image_size:
        vision = VisionEncoder(model=vision.model, family="timm", image_size=tuple(args.image_size),
                               mean=vision.mean.flatten().tolist(), std=vision.std.flatten().tolist())
    train_x, train_tokens, _ = elements(vision, range(TRAIN_SEED, TRAIN_SEED + args.train_pages))
    test_x, test_tokens, cells = elements(vision, range(TEST_SEED, TEST_SEED + args.test_pages))
    names = sorted(set(train_tokens) | set(test_tokens))
    train_y = torch.tensor([names.index(t) for t in train_tokens])
    test_y = torch.tensor([names.index(t) for t in test_tokens])
    columns = {"all": None, **{name: name for name in train_x}}
    predictions = {}
    for column, name in columns.items():
        fit = torch.stack(train_x[name]) if name else torch.cat([torch.stack(v) for v in train_x.values()], 1)
        test = torch.stack(test_x[name]) if name else torch.cat([torch.stack(v) for v in test_x.values()], 1)
        predictions[f"{column} ({fit.shape[1]})"] = linear_probe(fit, train_y, test, len(names), weight_decay=args.weight_decay)

    print(f"model: {args.model or 'shipped'}  input {vision.image_size[0]}x{vision.image_size[1]}  "
          f"{len(train_y)} elements of {args.train_pages} pages fit, {len(test_y)} of {args.test_pages} tested")
    print(f"{'element':14s} {'tested':>6s} " + " ".join(f"{c:>22s}" for c in predictions))
    rows = [("all", torch.ones_like(test_y, dtype=torch.bool))]
    rows += [(name, test_y == i) for i, name in enumerate(names)]
    for name, chosen in rows:
        print(f"{name:14s} {int(chosen.sum()):6d} " + " ".join(
            f"{(p[chosen] == test_y[chosen]).float().mean().item():22.2f}" for p in predictions.values()))
    for name, counts in cells.items():
        shared = sum(n for n in counts if n > 1) / sum(counts)
        print(f"{name}: {sum(counts) / len(counts):.2f} elements per occupied cell; {shared:.2f} of elements share theirs")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
