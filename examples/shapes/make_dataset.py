"""Write a small JSONL dataset of coloured shapes: images plus caption and question records.

    python examples/shapes/make_dataset.py data/shapes --images 300

gives data/shapes/images/*.png, train.jsonl (the first 90% of the images) and val.jsonl, in the formats
`vlm train` reads: {"image", "text"} captions and {"image", "question", "answer"} questions.
"""

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZE = (160, 96)  # width, height


def draw(shapes: list[tuple[str, str]], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", SIZE, "white")
    pen = ImageDraw.Draw(image)
    slot = SIZE[0] // len(shapes)
    for i, (colour, shape) in enumerate(shapes):  # left to right, one slot each
        r = rng.randint(14, 22)
        x, y = slot * i + slot // 2, rng.randint(r + 4, SIZE[1] - r - 4)
        box = [x - r, y - r, x + r, y + r]
        if shape == "circle":
            pen.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            pen.rectangle(box, fill=COLOURS[colour])
        else:
            pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLOURS[colour])
    return image


def records(name: str, shapes: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    words = [f"a {colour} {shape}" for colour, shape in shapes]
    caption = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    colour, shape = rng.choice(shapes)
    return [
        {"image": name, "text": caption},
        {"image": name, "question": "How many shapes are there?", "answer": str(len(shapes))},
        {"image": name, "question": f"What colour is the {shape}?", "answer": colour},
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    (args.folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(args.images):
        kinds = rng.sample(SHAPES, rng.randint(1, 3))  # each shape at most once, so questions have one answer
        shapes = [(rng.choice(list(COLOURS)), shape) for shape in kinds]
        name = f"images/{i:05d}.png"
        draw(shapes, rng).save(args.folder / name)
        lines.append([json.dumps(r) for r in records(name, shapes, rng)])
    cut = len(lines) * 9 // 10
    for split, chunk in (("train", lines[:cut]), ("val", lines[cut:])):
        (args.folder / f"{split}.jsonl").write_text("".join(line + "\n" for group in chunk for line in group))
    print(f"{args.folder}: {cut} training and {len(lines) - cut} validation images, {3 * len(lines)} records")


if __name__ == "__main__":
    main()
