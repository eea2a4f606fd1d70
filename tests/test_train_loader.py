"""StepLoader with worker processes, on stand-in sources: only the loader's own behaviour is under test."""

import fcntl
import sys
import threading
import time
from collections import Counter

import pytest
import torch

from vlm.train.batching import Row
from vlm.train.loader import RESULT_PIPE_BYTES, SWITCH_INTERVAL, StepLoader, threads_beside_workers


class CountingMixture:
    """Draws 0, 1, 2, ...; each example is its index."""

    def __init__(self):
        self.drawn = 0

    def draw(self):
        self.drawn += 1
        return self.drawn - 1

    def materialize(self, draw):
        return draw

    def state_dict(self):
        return {"drawn": self.drawn}


class PictureRows:
    """Each example loads as one 288x512 picture: a result far larger than a pipe's buffer."""

    skipped = Counter()

    def load(self, example):
        return Row([example], [example], [torch.full((3, 288, 512), example % 256, dtype=torch.uint8)], 1.0, "pictures")

    def collate(self, rows):
        return [row.input_ids[0] for row in rows], [row.images[0] for row in rows]


def test_close_returns_while_workers_still_send_prefetched_steps():
    # Pool.terminate waited forever when it came while several workers were sending large results of
    # prefetched steps (6 of 10 tries hung like this one before the loader read them first)
    for _ in range(10):
        loader = StepLoader(CountingMixture(), PictureRows(), batch_size=32, micro_batch=32,
                            slice_of=lambda draws: draws, workers=4, prefetch=3)
        (ids, images), = loader.next_step()
        assert ids == list(range(32))
        assert [int(image[0, 0, 0]) for image in images] == ids
        closing = threading.Thread(target=loader.close, daemon=True)
        closing.start()
        closing.join(timeout=60)
        assert not closing.is_alive(), "StepLoader.close hung with prefetched results unsent"


class SlowRows(PictureRows):
    def load(self, example):
        time.sleep(0.05)
        return super().load(example)


def test_busy_adds_up_the_seconds_workers_spent_loading_the_examples_returned():
    loader = StepLoader(CountingMixture(), SlowRows(), batch_size=8, micro_batch=8,
                        slice_of=lambda draws: draws, workers=2, prefetch=1)
    try:
        assert loader.busy == 0
        loader.next_step()
        assert 8 * 0.05 <= loader.busy < 8 * 0.05 + 1.0
        loader.next_step()
        assert 16 * 0.05 <= loader.busy < 16 * 0.05 + 2.0
    finally:
        loader.close()


def test_workers_shorten_the_thread_switch_interval_until_close():
    # the pool's threads need the GIL to move tasks and results while the training step holds it
    before = sys.getswitchinterval()
    loader = StepLoader(CountingMixture(), PictureRows(), batch_size=4, micro_batch=4,
                        slice_of=lambda draws: draws, workers=1)
    try:
        assert sys.getswitchinterval() == min(before, SWITCH_INTERVAL) < before
    finally:
        loader.close()
    assert sys.getswitchinterval() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_workers_results_cross_a_one_megabyte_pipe():
    # a result of 4 pictures (1.8 MB) crosses in 2 reads instead of ~28, each of which takes the GIL again
    loader = StepLoader(CountingMixture(), PictureRows(), batch_size=8, micro_batch=8,
                        slice_of=lambda draws: draws, workers=1)
    try:
        assert fcntl.fcntl(loader.pool._outqueue._reader.fileno(), fcntl.F_GETPIPE_SZ) == RESULT_PIPE_BYTES
        (ids, images), = loader.next_step()
        assert ids == list(range(8)) and [int(image[0, 0, 0]) for image in images] == ids
    finally:
        loader.close()


class UnevenRows:
    """Example i loads as a row of (7 i mod 10) + 1 tokens; every fifth one is skipped (None)."""

    skipped = Counter()

    def load(self, example):
        return None if example % 5 == 4 else Row([example] * ((7 * example) % 10 + 1), [], [], 1.0, "uneven")

    def collate(self, rows):
        return [row.input_ids[0] if row else None for row in rows]


@pytest.mark.parametrize("workers", [0, 2])
def test_micro_batches_are_cut_from_the_step_sorted_by_length(workers):
    # padding each micro-batch to its own longest row computes fewer pad tokens; the step's examples stay the same
    loader = StepLoader(CountingMixture(), UnevenRows(), batch_size=12, micro_batch=4,
                        slice_of=lambda draws: draws, workers=workers)
    try:
        for step in range(2):
            micro_batches = loader.next_step()
            drawn = range(12 * step, 12 * (step + 1))
            assert [len(ids) for ids in micro_batches] == [4, 4, 4]
            ids = [i for part in micro_batches for i in part]
            assert sorted(i for i in ids if i is not None) == [i for i in drawn if i % 5 != 4]
            lengths = [(7 * i) % 10 + 1 if i is not None else 0 for i in ids]
            assert lengths == sorted(lengths, reverse=True)  # skipped rows last
    finally:
        loader.close()


class SlowCollate(PictureRows):
    def collate(self, rows):
        time.sleep(0.3)
        return super().collate(rows)


def test_with_workers_the_next_step_is_collated_while_this_one_trains():
    loader = StepLoader(CountingMixture(), SlowCollate(), batch_size=4, micro_batch=4,
                        slice_of=lambda draws: draws, workers=1)
    try:
        (ids, _), = loader.next_step()
        assert ids == [0, 1, 2, 3] and loader.state_dict() == {"drawn": 4}  # the next step's draws, not yet returned
        time.sleep(0.6)  # the training step
        waiting = time.perf_counter()
        (ids, _), = loader.next_step()
        assert time.perf_counter() - waiting < 0.2 and ids == [4, 5, 6, 7]
        assert loader.collating >= 0.6  # both steps' collation counted, though the second one's was not waited for
    finally:
        loader.close()


def test_a_gpu_step_leaves_the_workers_their_cores_until_close(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert threads_beside_workers(14) == 2 and threads_beside_workers(20) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this machine share its cores
    assert threads_beside_workers(6) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        loader = StepLoader(CountingMixture(), PictureRows(), batch_size=4, micro_batch=4,
                            slice_of=lambda draws: draws, workers=15, leave_cores=True)
        try:
            assert torch.get_num_threads() == 1
            loader.next_step()
        finally:
            loader.close()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
