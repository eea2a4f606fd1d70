"""Does a model answer in chat what it answers to a bare question? The same held-out page questions both ways.

    python benchmarks/probe_chat.py                              # the shipped model, 40 pages x 3 styles
    python benchmarks/probe_chat.py --model runs/chat/final --pages 100

`ask` is the VQA prompt (`<image>Question:... Short answer:`), `chat` one user turn in the LM's chat template
(`vlm.load().chat`, the demo's Chat tab). The pages are held out (seeds from 90,000,000, as `vlm eval
write-sets`), each drawn in every style, with one question read off its tree (vlm.sketch.page_questions).
An answer is right when it equals the page's after VQA normalisation ("Two." and "2" are the same). The last
lines show a few chat answers as written.
"""

import argparse
import random
import time

import vlm
from vlm.eval.generated import HELD_OUT_SEED, PAGE_STYLES
from vlm.eval.vqa_metrics import normalize_answer
from vlm.sketch import generate_page, page_questions, render


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder; default: the shipped model")
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--show", type=int, default=6, help="chat answers to print")
    args = parser.parse_args()
    if args.pages < 1:
        parser.error("--pages must be at least 1")

    model = vlm.load(args.model, dtype=args.dtype)
    items = []  # (picture, question, answer)
    for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + args.pages):
        page = generate_page(seed)
        question, answer = page_questions(page, random.Random(f"probe-chat-{seed}"), n=1)[0]
        items += [(render(page, style=style, seed=seed), question, answer) for style in PAGE_STYLES]
    started = time.perf_counter()
    asked = model.ask([p for p, _, _ in items], [q for _, q, _ in items], max_new_tokens=8)
    ask_seconds = time.perf_counter() - started
    chatted = [model.chat([{"role": "user", "content": f"<image>{q}", "images": [p]}], max_new_tokens=24)
               for p, q, _ in items]
    chat_seconds = time.perf_counter() - started - ask_seconds

    print(f"model: {args.model or 'shipped'}  dtype {args.dtype}  {len(items)} questions")
    print(f"{'format':6s} {'right':>6s} {'share':>6s} {'seconds':>8s}")
    for name, said, seconds in (("ask", asked, ask_seconds), ("chat", chatted, chat_seconds)):
        right = sum(normalize_answer(s) == normalize_answer(a) for s, (_, _, a) in zip(said, items))
        print(f"{name:6s} {right:6d} {right / len(items):6.2f} {seconds:8.0f}")
    for (_, question, answer), said in list(zip(items, chatted))[: args.show]:
        print(f"  {question} ({answer}) -> chat: {said!r}")


if __name__ == "__main__":
    main()
