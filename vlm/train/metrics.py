"""Where training numbers go: metrics.jsonl (one object a line), TensorBoard when installed, and loss.png at the end.

The plot is drawn with PIL, so it needs nothing beyond the package's own dependencies.
"""

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from vlm.fileio import atomic_write

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)


class SourceLosses:
    """The training loss by data source: each source's mean token loss (without its loss weight) since the last
    `means()`. The mixture's loss is a weighted mean over all target tokens, where a source of two-token answers
    barely shows; this shows whether it is learning."""

    def __init__(self, names: list[str]):
        self.names = names
        self.sums = dict.fromkeys(names, 0.0)  # summed token losses
        self.tokens = dict.fromkeys(names, 0)  # target tokens

    def add(self, sources: list[str], example_losses: list[float], targets: list[int]):
        for source, loss, count in zip(sources, example_losses, targets):
            # the placeholder of an all-skipped batch has no targets (nor source); a step skipped for a
            # non-finite loss says nothing of the sources
            if count and math.isfinite(loss):
                self.sums[source] += loss
                self.tokens[source] += count

    def means(self, world) -> dict[str, float]:
        """{"loss/<source>": mean token loss} over every process, for the sources seen since the last call; resets."""
        means = {}
        for name in self.names:  # every process reduces the same names in the same order
            tokens = world.sum(float(self.tokens[name]))
            if tokens:
                means[f"loss/{name}"] = world.sum(self.sums[name]) / tokens
        self.sums, self.tokens = dict.fromkeys(self.names, 0.0), dict.fromkeys(self.names, 0)
        return means


class Metrics:
    def __init__(self, output_dir: Path, *, enabled: bool, resume_step: int = 0):
        """On resume, lines past the checkpoint's step (written before a crash) are dropped: they will be redone."""
        self.output_dir, self.enabled = Path(output_dir), enabled
        self.path = self.output_dir / METRICS_FILE
        self.tensorboard = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        atomic_write(self.path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: pip install tensorboard
            return
        self.tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=resume_step or None)

    def log(self, step: int, **values: float | None):
        if not self.enabled:
            return
        record = {"step": step, **{k: v for k, v in values.items() if v is not None}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for name, value in record.items():
                if name != "step":
                    self.tensorboard.add_scalar(name, value, step)

    def close(self):
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.close()
        records = read_metrics(self.path)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        validation = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if train or validation:
            image = plot_losses(train, validation)
            atomic_write(self.output_dir / PLOT_FILE, lambda tmp: image.save(tmp, format="PNG"))


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(train: list[tuple[int, float]], validation: list[tuple[int, float]], *, size=(800, 480)) -> Image.Image:
    """A line chart of the training loss (blue) and validation loss (orange dots) against the step."""
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    points = [p for p in train + validation if math.isfinite(p[1])]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if not points:
        return image
    steps, losses = [s for s, _ in points], [v for _, v in points]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(losses), max(max(losses), min(losses) + 1e-6)

    def xy(step, loss):
        return (left + (step - x0) / (x1 - x0) * (width - left - right),
                top + (y1 - loss) / (y1 - y0) * (height - top - bottom))

    for k in range(5):  # horizontal grid lines with their loss values
        value = y0 + (y1 - y0) * k / 4
        _, y = xy(x0, value)
        draw.line([left, y, width - right, y], fill=(225, 225, 225))
        draw.text((5, y - 6), f"{value:.3g}", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, height - bottom + 8), f"step {x0}", fill="black")
    draw.text((width - right - 80, height - bottom + 8), f"step {x1}", fill="black")
    draw.text((left, 8), "loss (blue: training, orange: validation)", fill="black")
    def dot(point, colour):
        x, y = point
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)

    line = [xy(s, v) for s, v in train if math.isfinite(v)]
    if len(line) > 1:
        draw.line(line, fill=BLUE, width=2)
    elif line:
        dot(line[0], BLUE)
    for s, v in validation:
        if math.isfinite(v):
            dot(xy(s, v), ORANGE)
    return image
