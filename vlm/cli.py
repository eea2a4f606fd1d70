"""The `vlm` command: caption, ask, sketch2html, chat, train, eval, average and demo.

    vlm caption photo.jpg street.png                 # the default model; --model DIR for another
    vlm ask photo.jpg "How many people are there?" --json
    vlm sketch2html sketch.png -o page.html --render page.png
    vlm chat --image photo.jpg                       # a conversation in the terminal
    vlm train configs/tiny.yaml
    vlm eval caption --data dataset_coco.json --images coco/ --shots 0,4,32
    vlm eval write-sets eval-sets/                   # held-out generated pages, and the commands to score them
    vlm average runs/x/checkpoints/step-* -o runs/x/averaged   # the mean of a run's checkpoints
    vlm demo --port 7860

--json prints one JSON object per result on stdout. A problem with the input (a missing or broken
file, a bad config, a model folder that is not one) prints one line, `vlm: error: ...`, and exits 2.
"""

import argparse
import importlib.util
import json
import shlex
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
DEMO_APP = Path(__file__).resolve().parent.parent / "demos" / "app.py"
KARPATHY_TRAIN = ("train", "restval")
RENDER_SIZE = (1200, 900)  # the page at its full CSS width


class CommandError(Exception):
    """A problem the user can fix, reported as one line."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the trainer's own command line, flags and exit codes included
        from vlm.train.cli import main as train

        return train(argv[1:])
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (CommandError, OSError, ValueError) as error:  # ImageError and ConfigError are ValueErrors
        print(f"vlm: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description="Flamingo-style vision-language models.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name, run, help, *, results=True):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        model_options(sub)
        if results:
            sub.add_argument("--json", action="store_true", help="print one JSON object per result")
        return sub

    sub = command("caption", caption, "Caption images.")
    sub.add_argument("images", nargs="+", metavar="IMG")
    sub.add_argument("--batch-size", type=positive, default=8, help="images per forward pass (default: 8)")
    generation_options(sub)

    sub = command("ask", ask, "Answer questions about an image.")
    sub.add_argument("image", metavar="IMG")
    sub.add_argument("questions", nargs="+", metavar="QUESTION")
    generation_options(sub)

    sub = command("sketch2html", sketch2html, "Turn a UI sketch into an HTML page (printed unless -o).")
    sub.add_argument("image", metavar="IMG")
    sub.add_argument("-o", "--output", metavar="HTML", help="write the page here")
    sub.add_argument("--render", metavar="PNG", help="also screenshot the page with headless Chromium")
    generation_options(sub)

    sub = command("chat", chat, "Talk with the model in the terminal (/image PATH, /reset, /quit).")
    sub.add_argument("--image", action="append", default=[], metavar="IMG", help="attach to the first message (repeatable)")
    generation_options(sub)

    # Listed for `vlm --help`; main() hands `vlm train ...` to vlm.train.cli before parsing.
    commands.add_parser("train", help="Train the adapters from a YAML recipe (vlm train --help).", add_help=False)

    evaluate = commands.add_parser("eval", help="Evaluate on COCO captions, VQAv2 or sketch-to-HTML samples.",
                                   description="Evaluate a model; scores are x100, as in the Flamingo tables.")
    tasks = evaluate.add_subparsers(title="tasks", metavar="TASK", required=True)

    sub = tasks.add_parser("caption", help="COCO captioning: BLEU, ROUGE-L, CIDEr-D (README: Evaluation).")
    sub.set_defaults(run=eval_caption)
    sub.add_argument("--data", required=True, metavar="FILE", help="Karpathy's dataset_coco.json or a COCO captions_*.json")
    sub.add_argument("--split", help="the Karpathy split(s) to evaluate, comma-separated (default: test)")
    sub.add_argument("--support", metavar="FILE", help="captions the demos come from (default: --data's train+restval)")
    eval_options(sub)

    sub = tasks.add_parser("vqa", help="VQAv2 accuracy (README: Evaluation).")
    sub.set_defaults(run=eval_vqa)
    sub.add_argument("--questions", required=True, metavar="FILE")
    sub.add_argument("--annotations", required=True, metavar="FILE")
    sub.add_argument("--support-questions", metavar="FILE", help="the demos' questions, e.g. the train2014 pair")
    sub.add_argument("--support-annotations", metavar="FILE")
    eval_options(sub)

    sub = tasks.add_parser("sketch2html", help="Sketch-to-HTML: tree and element scores (vlm.sketch).")
    sub.set_defaults(run=eval_sketch2html)
    sub.add_argument("--data", required=True, metavar="DIR",
                     help="a folder of NAME.png with NAME.gui or NAME.html, or pix2code's web set with --split")
    sub.add_argument("--split", choices=("train", "validation"),
                     help="with pix2code's web set as --data: its pages but the last tenth, or that tenth")
    sub.add_argument("--visual", action="store_true", help="add the rendered-block scores (needs Chromium)")
    sub.add_argument("--batch-size", type=positive, default=8)
    sub.add_argument("--limit", type=positive, metavar="N", help="only the first N samples")
    sub.add_argument("--output", metavar="FILE", help="write every sample's scores here (JSON)")
    model_options(sub)
    sub.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    generation_options(sub)

    sub = tasks.add_parser("write-sets", help="Write held-out generated pages (and easy-VQA) to evaluate on.",
                           description="Write held-out sets in the formats the other tasks read, and print "
                                       "the commands that evaluate them. Nothing loads a model.")
    sub.set_defaults(run=eval_write_sets)
    sub.add_argument("out", metavar="OUT", help="the folder to write pages/ (and easy-vqa/) into")
    # None keeps vlm.eval.write_page_sets' defaults, which the help repeats
    sub.add_argument("--pages", type=int, metavar="N", help="generated pages, each drawn in every style (default: 100)")
    sub.add_argument("--seed", type=int, metavar="S",
                     help="the first page's seed; pages take S, S+1, ... (default: 90000000, past every training seed)")
    sub.add_argument("--styles", nargs="+", metavar="STYLE",
                     help="each page is drawn in every one (default: sketch wireframe pix2code; browser: Chromium)")
    sub.add_argument("--questions-per-page", type=int, metavar="K", help="questions about each page (default: 3)")
    sub.add_argument("--easy-vqa-split", choices=("train", "test"), help="also write this split of easy-VQA")
    sub.add_argument("--easy-vqa-limit", type=positive, metavar="N", help="only its first N questions")

    sub = commands.add_parser("average", help="Average saved models or checkpoints of one run into one model.",
                              description="Write the element-wise mean of the adapters of saved models or training "
                                          "checkpoints of one model (e.g. a run's last few at a constant learning "
                                          "rate) as a saved model. No backbone is loaded.")
    sub.set_defaults(run=average)
    sub.add_argument("models", nargs="+", metavar="DIR", help="saved model folders or checkpoints (at least two)")
    sub.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write the averaged model to")
    sub.add_argument("--dtype", choices=("float32", "bfloat16"), help="the stored weights' type (default: the first DIR's)")

    sub = command("demo", demo, "Serve the Gradio demo: chat, sketch to HTML, caption and VQA.", results=False)
    sub.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1, this machine only)")
    sub.add_argument("--port", type=int, default=7860)
    sub.add_argument("--max-upload-mb", type=positive, default=10, help="largest accepted upload (default: 10)")
    sub.add_argument("--queue-size", type=positive, default=64, help="requests that may wait; more are turned away (default: 64)")
    return parser


def model_options(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="DIR", help="a saved model folder (default: the model shipped in vlm/weights/default)")
    group.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def generation_options(parser):
    # None means "the model's default", so a task keeps its own (sketch2html writes up to 512 tokens).
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=positive, metavar="N")
    group.add_argument("--num-beams", type=positive, metavar="N")
    group.add_argument("--sample", action="store_true", dest="do_sample", default=None, help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, metavar="T")
    group.add_argument("--top-p", type=float, metavar="P")
    group.add_argument("--seed", type=int, help="the sampling seed")


def eval_options(parser):
    parser.add_argument("--images", required=True, metavar="DIR", help="the COCO images, flat or in train2014/ and val2014/")
    parser.add_argument("--shots", type=shot_counts, default=(0,), metavar="N,N", help="demo counts, e.g. 0,4,32 (default: 0)")
    parser.add_argument("--text-demos", type=int, default=2, metavar="N",
                        help="text-only demos at 0 shots (default: 2, as OpenFlamingo)")
    parser.add_argument("--demos", choices=("random", "rices"), default="random",
                        help="how demos are chosen (rices: by the model's image features)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=positive, default=8)
    parser.add_argument("--limit", type=positive, metavar="N", help="only the first N examples")
    parser.add_argument("--output", metavar="FILE", help="write the report with every prediction here (JSON)")
    model_options(parser)
    parser.add_argument("--json", action="store_true", help="print the report's scores as one JSON object")
    group = parser.add_argument_group("generation", "OpenFlamingo's settings by default: 3 beams, 20 tokens (VQA: 5)")
    group.add_argument("--max-new-tokens", type=positive, metavar="N")
    group.add_argument("--num-beams", type=positive, metavar="N")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def shot_counts(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts like 0,4,32, got {text!r}") from None
    if any(n < 0 for n in shots):
        raise argparse.ArgumentTypeError(f"shot counts must be >= 0, got {text!r}")
    return shots


# --- commands ----------------------------------------------------------------------------------


def caption(args):
    from vlm.images import load_image

    images = [load_image(path) for path in args.images]  # every file is checked before the model loads
    model = load_model(args)
    for start in range(0, len(images), args.batch_size):
        texts = model.caption(images[start : start + args.batch_size], **generation(args))
        for path, text in zip(args.images[start:], texts):
            emit(args, {"image": path, "caption": text}, text if len(images) == 1 else f"{path}: {text}")


def ask(args):
    from vlm.images import load_image

    image = load_image(args.image)
    model = load_model(args)
    answers = model.ask([image] * len(args.questions), args.questions, **generation(args))
    for question, answer in zip(args.questions, answers):
        emit(args, {"image": args.image, "question": question, "answer": answer},
             answer if len(answers) == 1 else f"{question}: {answer}")


def sketch2html(args):
    from vlm.images import load_image

    for path in filter(None, (args.output, args.render)):  # fail before the model runs, not after
        if not Path(path).parent.is_dir():
            raise CommandError(f"cannot write {path}: there is no folder {Path(path).parent}")
    if args.render:
        if Path(args.render).suffix.lower() != ".png":
            raise CommandError(f"--render writes a PNG file, so its name must end in .png: {args.render}")
        from vlm.sketch import chromium_missing

        if reason := chromium_missing():
            raise CommandError(f"--render needs headless Chromium: {reason}")
    image = load_image(args.image)
    model = load_model(args)
    page = model.sketch_to_html(image, **generation(args))
    if args.output:
        Path(args.output).write_text(page)
    if args.render:
        from vlm.sketch import Chromium

        with Chromium() as browser:
            browser.screenshot(page, size=RENDER_SIZE).save(args.render)
    result = {"image": args.image, "html": page, "output": args.output, "render": args.render}
    if args.json or not args.output:
        emit(args, result, page.rstrip("\n"))


def chat(args):
    """One message a line on stdin; the answer streams to stdout. Lines starting with / are commands."""
    from vlm.images import load_image

    pending = [load_image(path) for path in args.image]  # images for the next message
    model = load_model(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model. /image PATH attaches a picture to your next message, "
              "/reset starts over, /quit or Ctrl-D ends.", file=sys.stderr)
    messages, failed = [], False
    while (line := _read_line("you> " if interactive else "")) is not None:
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            messages, pending = [], []
        elif line.startswith("/image"):
            try:
                pending.append(load_image(line.removeprefix("/image").strip()))
            except ValueError as error:
                print(f"vlm: error: {_one_line(error)}", file=sys.stderr)
        elif line:
            messages.append({"role": "user", "content": line, "images": pending})
            pending = []
            try:
                reply = _answer(model, messages, args, prefix="vlm> " if interactive else "")
            except ValueError as error:  # e.g. the conversation no longer fits the LM's context
                print(f"vlm: error: {_one_line(error)}", file=sys.stderr)
                messages.pop()
                failed = True
                continue
            messages.append({"role": "assistant", "content": reply})
    return EXIT_ERROR if failed else 0


def _answer(model, messages, args, *, prefix: str) -> str:
    if args.json:
        reply = model.chat(messages, **generation(args))
        emit(args, {"role": "assistant", "content": reply}, reply)
        return reply
    print(prefix, end="", flush=True)
    pieces = []
    for piece in model.chat(messages, stream=True, **generation(args)):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces)


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt) if prompt else sys.stdin.readline() or None
    except EOFError:
        if prompt:
            print(file=sys.stderr)
        return None


def eval_caption(args):
    from vlm.eval import evaluate_captioning, load_captions

    split = args.split.split(",") if args.split else None
    examples = load_captions(args.data, args.images, split=split)[: args.limit]
    source = args.support or args.data
    coco = _is_coco_captions(source)
    # demos: a Karpathy file's training split, or all of a COCO captions file given as --support (a COCO
    # file's own images are the ones evaluated, so they never serve as demos)
    support = [] if coco and not args.support else load_captions(source, args.images, split=None if coco else KARPATHY_TRAIN)
    _run_eval(args, evaluate_captioning, examples, support, max_new_tokens=20, what="--support FILE")


def eval_vqa(args):
    from vlm.eval import evaluate_vqa, load_vqa

    examples = load_vqa(args.questions, args.annotations, args.images)[: args.limit]
    if bool(args.support_questions) != bool(args.support_annotations):
        raise CommandError("--support-questions and --support-annotations go together")
    support = load_vqa(args.support_questions, args.support_annotations, args.images) if args.support_questions else []
    _run_eval(args, evaluate_vqa, examples, support, max_new_tokens=5,
              what="--support-questions and --support-annotations")


def _run_eval(args, evaluate, examples, support, *, max_new_tokens: int, what: str):
    if max(n or args.text_demos for n in args.shots) > 0 and not support:
        raise CommandError(f"--shots {','.join(map(str, args.shots))} needs demos (0 shots shows --text-demos "
                           f"{args.text_demos} text-only ones): give {what}, or use --shots 0 --text-demos 0")
    model = load_model(args)
    options = {"max_new_tokens": max_new_tokens, "num_beams": 3, **generation(args)}

    def generate(prompts, images):
        return model.generate(prompts, images=images, **options)

    with redirect_stdout(sys.stderr if args.json else sys.stdout):  # the runner prints its table
        report = evaluate(examples, generate=generate, support=support, shots=args.shots, demos=args.demos,
                          embed=_vision_features(model) if args.demos == "rices" else None, seed=args.seed,
                          batch_size=args.batch_size, zero_shot_text_demos=args.text_demos, output=args.output,
                          progress=sys.stderr.isatty())
    if args.json:
        results = [{"shots": r.shots, "metrics": r.metrics} for r in report.results]
        emit(args, {"task": report.task, "settings": report.settings, "results": results}, "")


def eval_sketch2html(args):
    from vlm.sketch import chromium_missing, evaluate_sketch2html, load_samples, pix2code_split

    if args.visual and (reason := chromium_missing()):
        raise CommandError(f"--visual needs headless Chromium: {reason}")
    if args.split:
        train, validation = pix2code_split(args.data)  # a folder without pix2code's train/ is a one-line error
        samples = train if args.split == "train" else validation
    else:
        samples = load_samples(args.data)
    samples = samples[: args.limit]
    model = load_model(args)
    options = generation(args)
    report = evaluate_sketch2html(lambda images: model.sketch_to_html(list(images), **options), samples,
                                  batch_size=args.batch_size, visual=args.visual)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    scores, elements = report["aggregate"], report["elements"]
    table = [f"{'element':<14} {'in refs':>8} {'written':>8} {'precision':>10} {'recall':>8}"]
    table += [f"{token:<14} {e['reference']:>8} {e['predicted']:>8} {e['precision']:>10.3f} {e['recall']:>8.3f}"
              for token, e in elements.items()]
    emit(args, {**scores, "elements": elements},
         "\n".join([*(f"{name:<20} {value:10.4f}" for name, value in scores.items()), "", *table]))


def average(args):
    import torch

    from vlm.train.averaging import average_adapters

    output = average_adapters(args.models, args.output, dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"averaged {len(args.models)} models into {output}")


def eval_write_sets(args):
    from vlm.eval import write_easy_vqa, write_page_sets

    def vlm_eval(*words) -> str:
        return shlex.join(["vlm", "eval", *map(str, words)])

    def vqa(sets: dict) -> str:  # zero-shot with a bare query: the format the model was trained on
        return vlm_eval("vqa", "--questions", sets["questions"], "--annotations", sets["annotations"],
                        "--images", sets["images"], "--text-demos", 0)

    out = Path(args.out)
    given = {name: getattr(args, name) for name in ("pages", "seed", "styles", "questions_per_page")
             if getattr(args, name) is not None}
    pages = write_page_sets(out / "pages", **given)
    commands = [
        "# sketch to HTML: element_f1, structure_match",
        vlm_eval("sketch2html", "--data", pages["sketches"]),
        "# questions about the pages: accuracy, and accuracy[number] over the counting questions",
        vqa(pages),
        "# captions of the pages: CIDEr-D (descriptions are longer than the default 20 new tokens)",
        vlm_eval("caption", "--data", pages["captions"], "--images", pages["images"], "--text-demos", 0,
                 "--max-new-tokens", 64),
    ]
    if args.easy_vqa_split:
        easy = write_easy_vqa(out / "easy-vqa", split=args.easy_vqa_split, limit=args.easy_vqa_limit)
        commands += [f"# easy-VQA's {args.easy_vqa_split} split: accuracy", vqa(easy)]
    print(f"# wrote {out}; evaluate the default model (--model DIR for another) with:", *commands, sep="\n")


def demo(args):
    if importlib.util.find_spec("gradio") is None:
        raise CommandError("the demo needs gradio: pip install 'vlm[demo]'")
    app = load_demo_app()
    model = load_model(args)
    app.launch(model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_queue=args.queue_size)


# --- helpers -----------------------------------------------------------------------------------


def load_model(args):
    import transformers  # here, so `vlm --help` and input errors come back without loading torch

    import vlm

    transformers.logging.set_verbosity_error()  # no info logs or "Loading weights" bars around the results
    transformers.logging.disable_progress_bar()
    return vlm.load(args.model, device=args.device, dtype=args.dtype)


def load_demo_app():
    """demos/app.py of this checkout: the demo lives beside the package, not in it."""
    if not DEMO_APP.is_file():
        raise CommandError(f"the demo runs from a source checkout of vlm; {DEMO_APP} is missing")
    spec = importlib.util.spec_from_file_location("vlm_demo_app", DEMO_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generation(args) -> dict:
    """The generation options given on the command line; the rest stay the model's defaults."""
    names = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def emit(args, result: dict, text: str):
    print(json.dumps(result, ensure_ascii=False) if args.json else text, flush=True)


def _is_coco_captions(path) -> bool:
    try:
        with open(path) as f:
            return "annotations" in json.load(f)
    except json.JSONDecodeError as error:
        raise CommandError(f"{path} is not valid JSON: {error}") from None


def _vision_features(model):
    """RICES's image features: the model's own frozen vision tower, its tokens averaged."""
    import torch

    vision = model.model.vision
    weight = next(vision.parameters())

    def embed(images):
        pixels = torch.stack([vision.preprocess(image) for image in images]).to(weight.device, weight.dtype)
        return vision(pixels).mean(1).float().cpu()

    return embed


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _one_line_warnings():
    warnings.showwarning = lambda message, *_, **__: print(f"vlm: warning: {_one_line(message)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
