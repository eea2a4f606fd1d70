"""torchrun with 2 CPU processes (gloo) takes the same steps as 1 process with the same global batch."""

import subprocess
import sys

import pytest
import torch
from vlm.train.metrics import read_metrics
from test_train_loop import adapter, one_thread, one_thread_env, readable_lm, run_recipe, shapes, tiny_recipe, write_recipe  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, readable_lm, shapes):
    """3 steps of 4 examples in one process, in 2 accumulated micro-batches of 2."""
    folder = tmp_path_factory.mktemp("one-process")
    return run_recipe(folder, tiny_recipe(readable_lm, shapes, folder / "run", steps=3, grad_accum=2)).final


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_weights_of_one(tmp_path, readable_lm, shapes, one_process, mode):
    # each process takes one micro-batch of 2: the same micro-batches, spread over processes instead of time
    # (that any split gives the same gradient is test_the_gradient_is_the_global_mean_however_the_batch_is_split)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=3, distributed=mode)
    config = write_recipe(tmp_path / "config.yaml", recipe)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vlm.train", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=one_thread_env())
    assert done.returncode == 0, done.stderr[-3000:]

    ours, reference = adapter(tmp_path / "run" / "final"), adapter(one_process)
    assert ours.keys() == reference.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=1e-5, msg=key)
    assert all(ours[k].abs().max() > 0 for k in ours if k.endswith("_gate"))  # it did train
    # the losses logged are the global batch's, the loss by source included
    logged = [{k: v for k, v in r.items() if k.startswith("loss")} for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    expected = [{k: v for k, v in r.items() if k.startswith("loss")} for r in read_metrics(one_process.parent / "metrics.jsonl")]
    assert len(logged) == len(expected) == 3 and all("loss/jsonl" in r for r in logged)
    for ours_logged, reference_logged in zip(logged, expected):
        assert ours_logged == pytest.approx(reference_logged, rel=1e-4)
