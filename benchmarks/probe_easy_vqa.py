"""Does a model read easy-VQA's pictures, or answer from the question? Accuracy by kind of question.

    python benchmarks/probe_easy_vqa.py                          # the shipped model, first 100 of each kind
    python benchmarks/probe_easy_vqa.py --model runs/default/final --per-kind 300

easy-VQA's yes/no questions name a shape or colour; most name one the picture does not show (test split:
5,890 of 7,136), so a model that always says "absent" scores 82% on yes/no without looking. Split apart, such a
model is right on nearly every question about a missing thing and wrong on nearly every one about a shown
thing; a model that reads the picture is right on both. Shape and colour names ("what colour is the shape?")
need the picture whatever the model does.
"""

import argparse
import time

import vlm
from vlm.data.easy_vqa import names_what_is_shown, read_easy_vqa

KINDS = ("names (shape or colour)", "yes/no, shown", "yes/no, missing")


def kind_of(question: str, answer: str) -> str:
    if answer not in ("yes", "no"):
        return KINDS[0]
    return KINDS[1] if names_what_is_shown(question, answer) else KINDS[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder; default: the shipped model")
    parser.add_argument("--per-kind", type=int, default=100, help="the first N test questions of each kind")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.per_kind < 1 or args.batch_size < 1:
        parser.error("--per-kind and --batch-size must be at least 1")

    model = vlm.load(args.model, dtype=args.dtype)
    questions = {kind: [] for kind in KINDS}
    for _, question, answer, picture in read_easy_vqa("test"):
        chosen = questions[kind_of(question, answer)]
        if len(chosen) < args.per_kind:
            chosen.append((question, answer, picture))
    print(f"model: {args.model or 'shipped'}  dtype {args.dtype}")
    print(f"{'kind':25s} {'right':>7s} {'of':>5s} {'share':>6s}")
    started = time.perf_counter()
    for kind, items in questions.items():
        right = 0
        for start in range(0, len(items), args.batch_size):
            batch = items[start : start + args.batch_size]
            answers = model.ask([p for _, _, p in batch], [q for q, _, _ in batch], max_new_tokens=4)
            right += sum(said.strip().lower() == answer for said, (_, answer, _) in zip(answers, batch))
        print(f"{kind:25s} {right:7d} {len(items):5d} {right / max(1, len(items)):6.2f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
