"""Load test of the demo's HTTP API on loopback: many clients at once, each sending caption requests.

    python benchmarks/load_test_demo.py [--model DIR] [--clients 20] [--requests 10] [--rounds 3]

Starts `vlm demo` in its own process on a free port (a tiny random model unless --model), then runs
--rounds rounds. In each, --clients threads start together and send --requests requests one after
another. A request is what the browser does: upload the image (/gradio_api/upload), start a caption
job (/gradio_api/call/caption) and read its result stream to the end; its latency covers all three.
Prints one row per round (requests, failures, wall time, throughput, p50/p95 latency, the server's
resident memory after the round) and the server's peak memory. Exits 1 if any request fails or takes
longer than --timeout seconds, or if the server's memory grows by more than --max-growth-mb (25) from the
end of the first round (which warms up caches) to the end of the last.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "demos" / "examples" / "cat.jpg"
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model and the `vlm demo` runner the tests use
from test_cli import save_tiny_vlm, serve_demo  # noqa: E402


@dataclass
class Round:
    latencies: list[float]  # seconds, of the requests that succeeded
    failures: list[str]
    wall: float  # seconds
    rss_mb: float  # the server's resident memory after the round


def caption(http: httpx.Client, api: str, image: bytes) -> str:
    """One request, as the demo's page makes it; raises on any failure."""
    upload = http.post(f"{api}/upload", files=[("files", (IMAGE.name, image, "image/jpeg"))])
    upload.raise_for_status()
    file = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
    job = http.post(f"{api}/call/caption", json={"data": [file, ""]})
    job.raise_for_status()
    stream = http.get(f"{api}/call/caption/{job.json()['event_id']}")  # server-sent events, closed at the end
    stream.raise_for_status()
    event, data = None, None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:") and event in ("complete", "error"):
            data = line.removeprefix("data:").strip()
    if event != "complete":
        raise RuntimeError(f"the job ended with {event!r}: {data}")
    text, _answers = json.loads(data)
    if not text:
        raise RuntimeError("an empty caption")
    return text


def run_round(api: str, image: bytes, *, clients: int, requests: int, timeout: float, pid: int) -> Round:
    latencies, failures = [], []
    start_together = threading.Barrier(clients)

    def client():
        with httpx.Client(timeout=timeout) as http:
            start_together.wait()
            for _ in range(requests):
                start = time.perf_counter()
                try:
                    caption(http, api, image)
                    latencies.append(time.perf_counter() - start)  # list.append is atomic
                except Exception as error:  # a timeout, a refused connection, an error event: all count
                    failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Round(latencies, failures, time.perf_counter() - start, memory_mb(pid, "VmRSS"))


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, from Linux's /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a saved model folder (default: a tiny random model)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per client and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one request may take")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server (0: torch's default)")
    parser.add_argument("--max-growth-mb", type=float, default=25)
    args = parser.parse_args()

    image = IMAGE.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny_vlm(Path(tmp) / "tiny")
        queue = str(max(64, args.clients))  # every client may wait at once
        with serve_demo(model, "--queue-size", queue, log=Path(tmp) / "demo.log", threads=args.threads) as (url, server):
            api = f"{url}/gradio_api"
            with httpx.Client(timeout=args.timeout) as http:
                caption(http, api, image)  # warm up: the first call pays for lazy initialisation
            rounds = [run_round(api, image, clients=args.clients, requests=args.requests, timeout=args.timeout,
                                pid=server.pid) for _ in range(args.rounds)]
            peak = memory_mb(server.pid, "VmHWM")

    print(f"{datetime.date.today()}, {machine()}, model: {args.model or 'tiny random'}, "
          f"{args.clients} clients x {args.requests} requests a round, server threads: {args.threads or 'default'}")
    print(f"{'round':>5} {'requests':>8} {'failed':>6} {'wall s':>7} {'req/s':>6} {'p50 s':>6} {'p95 s':>6} {'RSS MB':>7}")
    for i, r in enumerate(rounds, 1):
        done = len(r.latencies)
        p50, p95 = (percentile(r.latencies, 50), percentile(r.latencies, 95)) if done else (float("nan"),) * 2
        print(f"{i:>5} {done + len(r.failures):>8} {len(r.failures):>6} {r.wall:>7.1f} {done / r.wall:>6.2f} "
              f"{p50:>6.2f} {p95:>6.2f} {r.rss_mb:>7.0f}")
    growth = rounds[-1].rss_mb - rounds[0].rss_mb
    print(f"server peak memory (VmHWM): {peak:.0f} MB; growth from the end of round 1 to round {len(rounds)}: {growth:+.0f} MB")
    failures = [f for r in rounds for f in r.failures]
    for failure in sorted(set(failures))[:10]:
        print(f"failed: {failure}", file=sys.stderr)
    if failures or growth > args.max_growth_mb:
        print(f"FAIL: {len(failures)} failed requests, memory growth {growth:+.0f} MB "
              f"(at most {args.max_growth_mb:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
