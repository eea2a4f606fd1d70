"""The batches of each training step: drawn from the mixture here, loaded here or in worker processes.

Drawing an example (which source, which index) is cheap and stays in the training process, so the order of
examples and the resume state are the same with or without workers. Loading it (drawing a generated page,
decoding and resizing images, tokenising) is the costly part: with `workers`, forked processes load the next
`prefetch` steps, a few examples per task, while the current step trains, and a thread here collects the next
step's rows and pads them into batches meanwhile.
"""

import fcntl
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from vlm.data.mixture import Draw, Mixture
from vlm.train.batching import Batch, Collator, Row

EXAMPLES_PER_TASK = 4  # small enough to spread one step over many workers
# The pool's threads in this process send tasks and receive results, and need the GIL for it: each time the
# training step holds it they wait up to Python's switch interval (5 ms), and a result thread reading a worker's
# result (4 pictures, 1.8 MB) through Linux's default 64 KB pipe took it again after each of ~28 reads. Two fixes,
# measured with the last two tables of benchmarks/bench_loading.py (1 worker on 2 cores, a stand-in step that
# holds the GIL): a 0.5 ms switch interval cut the trainer's wait for batches from 0.30-0.33 of the time to
# 0.10-0.11; a 1 MB result pipe (two reads a result) to 0.11-0.12 even at 5 ms, and took the crossing alone
# from 1,242-2,268 pictures/s to 2,963-4,142. Both stay: a step that holds the GIL longer than the stand-in's
# costs each of the fewer reads at most 0.5 ms. 1 MB is the largest pipe Linux grants by default.
SWITCH_INTERVAL = 0.0005
RESULT_PIPE_BYTES = 1 << 20

# Set in the training process before the workers fork, so they inherit the sources and the tokenizer
# instead of receiving them pickled.
_WORKER_STATE: tuple[Mixture, Collator] | None = None


def _start_worker():
    # The parent's OpenMP threads do not survive fork: a parallel torch op here would wait for them forever.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the trainer finishes its step (which needs these workers'
    # results) and writes a checkpoint, so the workers must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load(draws: list[Draw]) -> tuple[list, dict, float]:
    started = time.perf_counter()
    mixture, collate = _WORKER_STATE
    collate.skipped.clear()
    rows = [collate.load(mixture.materialize(draw)) for draw in draws]
    return [_map_images(row, _as_numpy) for row in rows], dict(collate.skipped), time.perf_counter() - started


# A torch tensor returned by a worker crosses to the trainer through shared memory and a file descriptor of
# its own; a numpy array travels inside the pickle, twice as fast: 650-790 against 1,290-1,600 pictures/s
# from 2 workers on 2 cores (the last table of benchmarks/bench_loading.py).
def _as_numpy(image):
    return image.numpy() if isinstance(image, torch.Tensor) else image


def threads_beside_workers(workers: int) -> int:
    """Torch threads for a training process whose step runs on a GPU: the cores its workers leave free.

    Its CPU work is then padding batches, and at torch's default of a thread a core each parallel copy waits for
    threads the workers keep off the cores: on 2 cores beside 2 busy processes, padding a step of 64 took
    54-87 ms on 2 threads and 34-40 ms on 1 (idle: 19 and 31 ms). torchrun's processes share the cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - workers)


def widen_result_pipe(pool) -> bool:
    """Give a pool's result pipe RESULT_PIPE_BYTES; False where that cannot be (not Linux, a lower limit)."""
    try:
        fcntl.fcntl(pool._outqueue._reader.fileno(), fcntl.F_SETPIPE_SZ, RESULT_PIPE_BYTES)
    except (AttributeError, OSError):  # F_SETPIPE_SZ is Linux's; /proc/sys/fs/pipe-max-size may be lower
        return False
    return True


def _as_tensor(image):
    return torch.from_numpy(image) if isinstance(image, np.ndarray) else image


def _map_images(row: Row | None, convert) -> Row | None:
    """A row from Collator.load (None: skipped) with `convert` applied to each of its images."""
    return None if row is None else row._replace(images=[convert(image) for image in row.images])


def by_length(rows: list[Row | None], size: int) -> list[list[Row | None]]:
    """A step's rows -> micro-batches of `size`, longest rows first (skipped ones, None, last).

    Each micro-batch is padded to its own longest row, and one step mixes pages of ~110 tokens with answers of
    a few: of the tokens a batch of 8 from configs/default-stage.yaml computes, 55% are real when its two
    micro-batches are cut in the order drawn, 72% when cut from the rows sorted by length
    (benchmarks/bench_training.py). The gradient is the same either way: the trainer weighs each micro-batch by
    its share of the step's targets.
    """
    rows = sorted(rows, key=lambda row: -len(row.input_ids) if row else 0)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class StepLoader:
    """`next_step()` -> this process's micro-batches of the next optimiser step.

    `leave_cores` (a step that runs on a GPU): this process keeps only the cores the workers leave free, until
    close(). `slice_of(draws)` picks this process's share of a global batch's draws; `micro_batch` splits it, longest
    examples first (see `by_length`).
    `state_dict()` is the mixture's state before the first step not yet returned. `busy` adds up the seconds
    workers spent loading the examples returned so far: over the workers' wall time, near 1 says the workers
    are the limit, far below 1 with batches still late says the crossing to this process is. `collating` adds up
    the seconds spent padding and stacking them into batches. With workers, that happens in a thread while the
    step before trains: on the H100 (run 16) collating in the training process took 0.54 of the run, and the
    GPU waited all that time (the trainer's wait for batches was 0.55); with this thread and `leave_cores` the
    same run waited 0.01 and trained 323 examples a second where it had trained 155.
    """

    def __init__(self, mixture: Mixture, collate: Collator, *, batch_size: int, micro_batch: int,
                 slice_of: Callable[[list], list], workers: int = 0, prefetch: int = 3, leave_cores: bool = False):
        self.mixture, self.collate = mixture, collate
        self.batch_size, self.micro_batch, self.slice_of = batch_size, micro_batch, slice_of
        self.prefetch, self.workers, self.busy, self.collating = prefetch, workers, 0.0, 0.0
        self.pending = deque()  # (mixture state before the step, its draws or, with workers, its task results)
        self.next = None  # (mixture state before the step, Future of _assemble's result): the step returned next
        self.pool = self.thread = None
        self.switch_interval = sys.getswitchinterval()  # restored by close()
        self.threads = torch.get_num_threads()  # likewise
        if workers:
            sys.setswitchinterval(min(self.switch_interval, SWITCH_INTERVAL))
            global _WORKER_STATE
            _WORKER_STATE = (mixture, collate)
            # fork: the workers share the parent's memory (sources, tokenizer); start them before CUDA is used
            self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_start_worker)
            widen_result_pipe(self.pool)
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="step-loader")
            if leave_cores:
                torch.set_num_threads(threads_beside_workers(workers))

    def next_step(self) -> list[Batch]:
        if self.next is None:
            self.next = self._start_next()
        batches, skipped, busy, collating = self.next[1].result()
        self.collate.skipped.update(skipped)  # counted here, so the trainer reads them only between steps
        self.busy, self.collating = self.busy + busy, self.collating + collating
        self.next = self._start_next() if self.thread else None  # readied while this step trains
        return batches

    def _start_next(self) -> tuple[dict, Future]:
        if not self.pending:
            self._plan()
        state, tasks = self.pending.popleft()
        if self.pool:
            self._plan()  # the workers start on the following steps
            return state, self.thread.submit(self._assemble, tasks)
        done = Future()
        done.set_result(self._assemble(tasks))
        return state, done

    def _assemble(self, tasks) -> tuple[list[Batch], Counter, float, float]:
        """A step's draws or task results -> (its micro-batches, examples skipped, workers' seconds, seconds
        collating)."""
        skipped, busy = Counter(), 0.0
        if self.pool:
            rows = []
            for task in tasks:
                task_rows, task_skipped, seconds = task.get()
                skipped.update(task_skipped)
                busy += seconds
                rows += [_map_images(row, _as_tensor) for row in task_rows]
        else:  # in this process: the collator counts what it skips itself
            rows = [self.collate.load(self.mixture.materialize(draw)) for draw in tasks]
        started = time.perf_counter()
        batches = [self.collate.collate(part) for part in by_length(rows, self.micro_batch)]
        return batches, skipped, busy, time.perf_counter() - started

    def _plan(self):
        """Draw the next steps (up to `prefetch` ahead) and hand their loading to the workers."""
        while len(self.pending) < (self.prefetch if self.pool else 1):
            state = self.mixture.state_dict()
            tasks = self.slice_of([self.mixture.draw() for _ in range(self.batch_size)])
            if self.pool:
                tasks = [self.pool.apply_async(_load, (tasks[i : i + EXAMPLES_PER_TASK],))
                         for i in range(0, len(tasks), EXAMPLES_PER_TASK)]
            self.pending.append((state, tasks))

    def state_dict(self) -> dict:
        if self.next is not None:
            return self.next[0]
        return self.pending[0][0] if self.pending else self.mixture.state_dict()

    def load_state_dict(self, state: dict):
        self._drop_next()
        self.pending.clear()
        self.mixture.load_state_dict(state)

    def _drop_next(self):
        if self.next is not None:
            self.next[1].exception()  # wait for the thread to let go of its tasks; what it made is not wanted
            self.next = None

    def close(self):
        self._drop_next()
        if self.thread is not None:
            self.thread.shutdown()
            self.thread = None
        if self.pool is not None:
            # A worker blocked writing a large result holds the result queue's lock, and Pool.terminate needs
            # that lock: with results of prefetched steps unread it waited forever. Read them first.
            for _, tasks in self.pending:
                for task in tasks:
                    task.wait()
            self.pool.terminate()
            self.pool = None
            sys.setswitchinterval(self.switch_interval)
            torch.set_num_threads(self.threads)
