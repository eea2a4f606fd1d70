"""Run a model over COCO captioning or VQAv2 at several shot counts and score it.

The model is any `generate(prompts, images) -> texts` callable: prompts[i] holds one
<image> marker per entry of images[i], and texts[i] is what the model wrote after prompts[i]
(the continuation only). Scores are reported x100, as in the Flamingo and OpenFlamingo tables.

Options of evaluate_captioning and evaluate_vqa (all keyword-only):
    support               examples the demos are drawn from (e.g. the training split)
    shots=(0,)            the demo counts to run, e.g. (0, 4, 32)
    demos="random"        "random" (seeded by `seed`) or "rices" (needs `embed`)
    embed=None            images -> features [n, dim], for RICES
    rices_cache=None      a file that keeps the support features between runs
    seed=0, batch_size=8
    zero_shot_text_demos=2
    output=None           a JSON file, rewritten after each shot count
    progress=True         show progress bars

Zero-shot follows Flamingo and OpenFlamingo: the prompt still opens with two demos, but
text-only (their images and <image> markers removed), so the model sees the answer format.
Set zero_shot_text_demos=0 for a bare query.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vlm.eval.caption_metrics import score_captions
from vlm.eval.datasets import CaptionExample, VQAExample
from vlm.eval.fewshot import (RICES, EmbedFn, RandomDemos, caption_prompt, load_image, postprocess_answer,
                              postprocess_caption, vqa_prompt)
from vlm.eval.vqa_metrics import vqa_accuracy
from vlm.prompts import IMAGE_TOKEN

GenerateFn = Callable[[list[str], list[list[Image.Image]]], list[str]]


@dataclass
class ShotsResult:
    shots: int
    metrics: dict[str, float]
    items: list[dict]  # one per example: its id, the raw output, the prediction, its scores, its demos


@dataclass
class EvalReport:
    task: str
    settings: dict
    results: list[ShotsResult] = field(default_factory=list)

    def summary(self) -> str:
        """A table with one row per shot count and one column per metric."""
        s = self.settings
        lines = [f"{self.task}: {s['examples']} examples, {s['demos']} demos, seed {s['seed']}"]
        if self.results:
            names = list(self.results[0].metrics)
            widths = [max(len(name), 7) for name in names]
            lines.append("shots  " + "  ".join(name.rjust(w) for name, w in zip(names, widths)))
            for result in self.results:
                lines.append(f"{result.shots:>5}  " + "  ".join(
                    f"{result.metrics[name]:{w}.2f}" for name, w in zip(names, widths)))
        return "\n".join(lines)


@dataclass(frozen=True)
class _Task:
    name: str
    demo_prompt: Callable  # support example -> its prompt with the answer
    query_prompt: Callable  # query example -> its prompt up to where the model writes
    postprocess: Callable[[str], str]
    id_field: str  # the example attribute that names it in the results
    score: Callable  # (examples, predictions) -> (metrics, per-example scores)


def _score_captions(examples: Sequence[CaptionExample], predictions: list[str]):
    scores = score_captions({e.image_id: list(e.references) for e in examples},
                            {e.image_id: p for e, p in zip(examples, predictions)})
    per_image = [{name: 100 * v for name, v in scores.per_image[e.image_id].items()} for e in examples]
    return {name: 100 * v for name, v in scores.corpus.items()}, per_image


def _score_vqa(examples: Sequence[VQAExample], predictions: list[str]):
    accuracies = [100 * vqa_accuracy(p, e.answers) for e, p in zip(examples, predictions)]
    by_type: dict[str, list[float]] = {}
    for example, accuracy in zip(examples, accuracies):
        if example.answer_type:
            by_type.setdefault(example.answer_type, []).append(accuracy)
    metrics = {"accuracy": sum(accuracies) / len(accuracies)}
    metrics |= {f"accuracy[{t}]": sum(a) / len(a) for t, a in sorted(by_type.items())}
    return metrics, [{"accuracy": a} for a in accuracies]


_CAPTIONING = _Task("captioning", lambda e: caption_prompt(e.references[0].strip()), lambda e: caption_prompt(),
                    postprocess_caption, "image_id", _score_captions)
_VQA = _Task("vqa", lambda e: vqa_prompt(e.question.strip(), e.answer), lambda e: vqa_prompt(e.question.strip()),
             postprocess_answer, "question_id", _score_vqa)


def evaluate_captioning(examples: Sequence[CaptionExample], *, generate: GenerateFn,
                        support: Sequence[CaptionExample] = (), **options) -> EvalReport:
    """Caption every example at each shot count; report BLEU-1..4, ROUGE-L and CIDEr-D.

    Demos show the first reference caption of a support image. Options: see the module docstring.
    """
    repeated = len(examples) - len({e.image_id for e in examples})
    if repeated:
        raise ValueError(f"captioning examples must be distinct images; {repeated} image ids repeat")
    return _evaluate(_CAPTIONING, examples, generate=generate, support=support, **options)


def evaluate_vqa(examples: Sequence[VQAExample], *, generate: GenerateFn,
                 support: Sequence[VQAExample] = (), **options) -> EvalReport:
    """Answer every question at each shot count; report VQAv2 accuracy, overall and per answer type.

    Demos show the most frequent human answer of a support question. Options: see the module docstring.
    """
    return _evaluate(_VQA, examples, generate=generate, support=support, **options)


def _evaluate(task: _Task, examples: Sequence, *, generate: GenerateFn, support: Sequence = (),
             shots: Sequence[int] = (0,), demos: str = "random", embed: EmbedFn | None = None,
             seed: int = 0, batch_size: int = 8, zero_shot_text_demos: int = 2,
             rices_cache: str | Path | None = None, output: str | Path | None = None,
             progress: bool = True) -> EvalReport:
    """The loop both tasks share; prints the summary table at the end."""
    if not examples:
        raise ValueError("no examples to evaluate")
    if not shots or any(n < 0 for n in shots) or zero_shot_text_demos < 0:
        raise ValueError(f"shots must list counts >= 0, got shots={list(shots)}, "
                         f"zero_shot_text_demos={zero_shot_text_demos}")
    demo_counts = [n if n > 0 else zero_shot_text_demos for n in shots]
    if demos not in ("random", "rices"):
        raise ValueError(f"demos must be 'random' or 'rices', got {demos!r}")
    if demos == "rices" and embed is None:
        raise ValueError("demos='rices' needs an `embed` function for image features")
    if max(demo_counts) > 0 and not support:
        raise ValueError(f"shots={list(shots)} need demos, but the support set is empty")
    if max(demo_counts) == 0:
        selector = None
    elif demos == "random":
        selector = RandomDemos([s.image_id for s in support], seed=seed)
    else:
        selector = RICES.build([s.image_path for s in support], [s.image_id for s in support], embed=embed,
                               cache=rices_cache, progress=progress)

    report = EvalReport(task.name, {"examples": len(examples), "support": len(support), "demos": demos,
                                    "seed": seed, "shots": list(shots), "batch_size": batch_size,
                                    "zero_shot_text_demos": zero_shot_text_demos})
    for n, num_demos in zip(shots, demo_counts):
        outputs, demo_ids = [], []
        batches = range(0, len(examples), batch_size)
        for start in tqdm(batches, desc=f"{task.name} {n}-shot", disable=not progress):
            batch = examples[start:start + batch_size]
            images = [load_image(e.image_path) for e in batch]
            chosen = (selector.select([e.image_id for e in batch], images, num_demos) if num_demos
                      else [[] for _ in batch])
            prompts, image_lists = [], []
            for example, image, indices in zip(batch, images, chosen):
                shown = [support[i] for i in indices]
                context = "".join(task.demo_prompt(s) for s in shown)
                if n == 0:
                    context = context.replace(IMAGE_TOKEN, "")  # zero-shot demos are text only
                prompts.append(context + task.query_prompt(example))
                image_lists.append(([load_image(s.image_path) for s in shown] if n > 0 else []) + [image])
                demo_ids.append([getattr(s, task.id_field) for s in shown])
            texts = generate(prompts, image_lists)
            if len(texts) != len(prompts):
                raise ValueError(f"generate returned {len(texts)} texts for {len(prompts)} prompts")
            outputs.extend(texts)
        predictions = [task.postprocess(text) for text in outputs]
        metrics, scores = task.score(examples, predictions)
        items = [{task.id_field: getattr(e, task.id_field), "output": o, "prediction": p, "scores": s, "demos": d}
                 for e, o, p, s, d in zip(examples, outputs, predictions, scores, demo_ids)]
        report.results.append(ShotsResult(n, metrics, items))
        if output is not None:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(asdict(report), indent=1, default=str))
    print(report.summary())
    return report
