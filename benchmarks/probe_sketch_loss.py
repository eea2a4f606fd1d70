"""Where does a model's loss on sketches go? Teacher-forced loss by the reference's DSL word.

    python benchmarks/probe_sketch_loss.py --data eval-sets/pages/sketches            # the shipped model, 30 pages
    python benchmarks/probe_sketch_loss.py --data ../shared/data/pix2code-web --split validation --model M

Each sample's reference DSL is fed after its picture, as in training, and each target token's loss is
credited to the DSL word it belongs to. The table gives each word's share of the loss, its mean loss (nats per
word) and how often the model's most likely next token starts it; then the most common mistakes (the word
written, the token the model put first). A word the picture decides but whose loss stays high is one the
model does not read from the picture.
"""

import argparse
import time
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

import vlm
from vlm import prompts
from vlm.sketch import load_samples, pix2code_split, to_dsl


def word_losses(model: vlm.VLM, sample) -> list[tuple[str, float, bool, str]]:
    """(word, summed loss of its tokens in nats, whether the most likely token was its first, that token)."""
    net, tokenizer = model.model, model.model.tokenizer
    dsl = to_dsl(sample.tree)
    encoded = prompts.encode(prompts.sketch_to_html(dsl), tokenizer, max_length=None)
    input_ids = torch.tensor([encoded.input_ids])  # (1, t)
    vision_dtype = next(net.vision.parameters()).dtype
    pixels = net.vision.preprocess(sample.load_image())[None, None].to(vision_dtype)  # (1, 1, 3, h, w)
    with torch.no_grad():
        hidden = net(input_ids, pixel_values=pixels)["hidden"][0, :-1]  # (t-1, d): position i predicts token i+1
        targets = torch.tensor(encoded.labels[1:])
        chosen = targets != prompts.IGNORE_INDEX
        logprobs = F.log_softmax(net.logits(hidden[chosen]).float(), dim=-1)  # (n, vocab)
    targets = targets[chosen]
    losses = -logprobs.gather(1, targets[:, None])[:, 0]  # (n,)
    best = logprobs.argmax(-1)
    rows, start = [], 0
    for word in dsl.split():
        pieces = tokenizer.encode(" " + word, add_special_tokens=False)
        if targets[start : start + len(pieces)].tolist() != pieces:
            raise ValueError(f"this tokenizer does not write the DSL word by word (at {word!r}): cannot credit words")
        rows.append((word, losses[start : start + len(pieces)].sum().item(), best[start].item() == pieces[0],
                     tokenizer.decode([best[start].item()]).strip()))
        start += len(pieces)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of NAME.png + NAME.gui, or pix2code's web set with --split")
    parser.add_argument("--split", choices=("train", "validation"), help="with pix2code's web set as --data")
    parser.add_argument("--model", default=None, help="a saved model folder; default: the shipped model")
    parser.add_argument("--limit", type=int, default=30, help="the first N samples")
    parser.add_argument("--mistakes", type=int, default=15, help="how many of the most common mistakes to list")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.limit < 1:
        parser.error("--limit must be at least 1")

    try:
        if args.split:
            train, validation = pix2code_split(args.data)
            samples = train if args.split == "train" else validation
        else:
            samples = load_samples(args.data)
    except ValueError as error:  # no such folder, no samples in it, an unreadable .gui
        parser.error(str(error))
    samples = samples[: args.limit]
    model = vlm.load(args.model, dtype=args.dtype)
    started = time.perf_counter()
    losses, right, mistakes = defaultdict(list), Counter(), Counter()
    for sample in samples:
        for word, loss, first_right, written in word_losses(model, sample):
            losses[word].append(loss)
            right[word] += first_right
            if not first_right:
                mistakes[word, written] += 1
    total = sum(map(sum, losses.values()))
    print(f"model: {args.model or 'shipped'}  dtype {args.dtype}  {len(samples)} samples of {args.data}"
          f"  loss {total / len(samples):.2f} nats a page")
    print(f"{'word':14s} {'count':>6s} {'share':>6s} {'nats':>6s} {'first token right':>18s}")
    for word, values in sorted(losses.items(), key=lambda item: -sum(item[1])):
        print(f"{word:14s} {len(values):6d} {sum(values) / total:6.3f} {sum(values) / len(values):6.3f}"
              f" {right[word] / len(values):18.2f}")
    print("most common mistakes (word: token written first instead, times):")
    print(", ".join(f"{word}: {written!r} {n}" for (word, written), n in mistakes.most_common(args.mistakes)))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
