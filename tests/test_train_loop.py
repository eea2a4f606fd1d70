"""The training loop on a tiny model: it learns, resumes exactly, and survives NaNs, SIGINT, SIGKILL and a full disk."""

import errno
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from tiny_backbones import save_tiny_lm
from transformers import AutoModelForCausalLM

import vlm
from vlm.config import ConfigError
from vlm.data import DataError
from vlm.model import VisionLanguageModel, build_model
from vlm.train import checkpoint as checkpoint_module
from vlm.train import load_train_config, train
from vlm.train import trainer as trainer_module
from vlm.train.batching import Collator, FeatureCache, TrainStep
from vlm.train.checkpoint import CheckpointError, latest_checkpoint
from vlm.train.distributed import init_world
from vlm.train.metrics import SourceLosses, read_metrics
from vlm.train.trainer import TooManyBadSteps, Trainer, lr_factor

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and busy cores make OpenMP's waiting very slow; subprocesses
    get OMP_NUM_THREADS=1 too, so that runs in and out of this process compute bit for bit alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def readable_lm(tmp_path_factory) -> Path:
    """The tiny random Llama with its (tied) embeddings scaled up: at the usual 0.02 init its output head
    cannot put a logit more than ~0.6 above the rest, so no adapter could drive the loss far down."""
    folder = save_tiny_lm("llama", tmp_path_factory.mktemp("readable-lm"))
    lm = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(10)
    lm.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A JSONL set of four coloured squares with captions: small enough to learn by heart."""
    folder = tmp_path_factory.mktemp("shapes")
    lines = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (96, 64), rgb).save(folder / f"{name}.png")
        lines.append(json.dumps({"image": f"{name}.png", "text": f"a {name} square"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def tiny_recipe(lm: Path, data: Path, output: Path, **run) -> dict:
    """A training config for the tiny model, as the YAML dict a user would write."""
    return {
        "model": dict(lm=str(lm), vision="timm:resnet10t", vision_weights=None, image_size=[64, 96], num_latents=4,
                      resampler_depth=1, resampler_heads=2, resampler_dim_head=8, cross_attn_heads=2,
                      cross_attn_dim_head=8, cross_attn_ff_mult=2, cross_attn_every_n_layers=2),
        "data": {"sources": [{"kind": "jsonl", "path": str(data)}], "max_length": 32},
        "optim": {"lr": 3e-3, "gate_lr": 3e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "run": {"output_dir": str(output), "steps": 8, "batch_size": 4, "log_every": 1, "checkpoint_every": 2, **run},
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_recipe(tmp_path, recipe: dict, *, resume=False, overrides=()):
    config = load_train_config(write_recipe(tmp_path / f"config-{time.monotonic_ns()}.yaml", recipe), list(overrides))
    return train(config, resume=resume)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter.safetensors"))


def assert_same_weights(a: Path, b: Path):
    a, b = adapter(a), adapter(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loss_falls_on_a_set_it_can_learn_by_heart(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=40, checkpoint_every=100)
    recipe["data"]["validation"] = [{"kind": "jsonl", "path": str(shapes), "name": "held-out"}]
    recipe["run"].update(eval_every=20, eval_batches=1)
    config = load_train_config(write_recipe(tmp_path / "config.yaml", recipe))
    result = train(config, task_metrics=lambda model: {"gate": model.cross_attn["3"].ff_gate.item()})

    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "gate" in r] == [20, 40]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 40 and losses[-1] < 0.2 * losses[0], losses
    validation = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(validation) == 2 and validation[-1] < 0.2 * losses[0]
    assert all(r["samples_per_s"] > 0 and r["lr"] == 3e-3 and 0 < r["data_wait"] < 1 for r in records if "loss" in r)
    assert all(0 < r["collating"] <= r["data_wait"] for r in records if "loss" in r)  # part of the wait
    # one source: its mean token loss is the step's loss
    assert all(r["loss/jsonl"] == pytest.approx(r["loss"], rel=1e-4) for r in records if "loss" in r)
    assert Image.open(tmp_path / "run" / "loss.png").size == (800, 480)
    # the final model opens with the library's own loader, and equals the last checkpoint
    assert result.final == tmp_path / "run" / "final" and not result.interrupted
    loaded = vlm.load(result.final)
    assert torch.equal(loaded.model.cross_attn["1"].ff_gate, adapter(result.final)["cross_attn.1.ff_gate"])
    assert isinstance(loaded.caption(Image.open(shapes.parent / "red.png")), str)
    assert_same_weights(result.final, latest_checkpoint(tmp_path / "run"))


def test_cached_features_give_the_loss_of_pixels(tmp_path, readable_lm, shapes):
    config = load_train_config(write_recipe(tmp_path / "c.yaml", tiny_recipe(readable_lm, shapes, tmp_path / "run")))
    trainer = Trainer(config, world=init_world("cpu"))
    examples = [next(trainer.mixture) for _ in range(4)]
    collate = functools.partial(Collator, trainer.model, max_length=32, max_pixels=10**6, on_error={})
    pixel_batch, image_batch = collate(pixels=True)(examples), collate(pixels=False)(examples)
    cache = FeatureCache(tmp_path / "features", model=trainer.model, dtype=None)
    with torch.no_grad():
        from_pixels, _ = TrainStep(trainer.model)(pixel_batch)
        cold, _ = TrainStep(trainer.model, cache)(image_batch)
        assert (cache.hits, cache.misses) == (0, 4)
        warm, _ = TrainStep(trainer.model, cache)(image_batch)
        assert (cache.hits, cache.misses) == (4, 4)  # the encoder did not run again
    torch.testing.assert_close(cold, from_pixels, rtol=0, atol=1e-6)
    assert torch.equal(warm, cold)
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 4


def test_the_feature_cache_keys_differ_when_the_tokens_carry_other_channels(tmp_path, readable_lm, shapes):
    image, keys = Image.new("RGB", (96, 64), "white"), set()
    kinds = ({}, {"colour_grid": 2}, {"half_stride_features": True}, {"quarter_stride_features": True})
    for channels in kinds:
        recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run")
        recipe["model"].update(channels)
        model = build_model(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)).model)
        keys.add(FeatureCache(tmp_path / "features", model=model, dtype=None).key(image))
    assert len(keys) == len(kinds)  # a cache written for one kind of token is never read as another


def test_training_with_the_feature_cache_matches_training_on_pixels(tmp_path, readable_lm, shapes):
    pixels = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "pixels", steps=3))
    cached = tiny_recipe(readable_lm, shapes, tmp_path / "cached", steps=3)
    cached["data"]["feature_cache"] = str(tmp_path / "features")
    features = run_recipe(tmp_path, cached)
    a, b = adapter(pixels.final), adapter(features.final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, readable_lm, shapes):
    reference = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "reference"))

    killed = tmp_path / "killed"
    config = write_recipe(tmp_path / "killed.yaml", tiny_recipe(readable_lm, shapes, killed))
    process = subprocess.Popen([sys.executable, "-m", "vlm.train", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=one_thread_env())
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-00000004").is_dir():  # the second checkpoint
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no second checkpoint after 120 s"
        time.sleep(0.05)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not (killed / "final").exists()

    resumed = train(load_train_config(config), resume=True)
    assert resumed.step == 8
    assert_same_weights(resumed.final, reference.final)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 9))  # lines the killed run wrote past its checkpoint are not repeated


@pytest.mark.parametrize("workers", [0, 2])
def test_sigint_writes_a_checkpoint_and_exits_then_resume_finishes_the_run(tmp_path, readable_lm, shapes, monkeypatch,
                                                                           workers):
    # the reference loads in-process; with workers, steps loaded ahead when SIGINT came are not lost on resume
    reference = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "reference", steps=5))

    original = Trainer.train_step

    def interrupted_at_step_3(self):
        out = original(self)
        if self.step == 2:  # the step that is ending is the third
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", interrupted_at_step_3)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=5, checkpoint_every=100, data_workers=workers)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started as a background job
    result = run_recipe(tmp_path, recipe)
    assert result.interrupted and result.step == 3 and result.final is None
    assert latest_checkpoint(tmp_path / "run").name == "step-00000003"

    monkeypatch.setattr(Trainer, "train_step", original)
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer put the handler back
    finished = run_recipe(tmp_path, recipe, resume=True)
    assert finished.step == 5
    assert_same_weights(finished.final, reference.final)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, readable_lm, shapes, monkeypatch):
    real_save = checkpoint_module.torch.save
    calls = []

    def disk_full_on_second_write(obj, path):
        calls.append(path)
        if len(calls) == 2:
            real_save(obj, path)  # half a file lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full_on_second_write)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=6)
    with pytest.raises(CheckpointError, match=r"step 4 .*No space left.*latest intact checkpoint is .*step-00000002"):
        run_recipe(tmp_path, recipe)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"]  # no half-written folder left

    # a checkpoint that cannot be read (here: a truncated weights file) is set aside; the one before it is used
    broken = checkpoints / "step-00000004"
    shutil.copytree(checkpoints / "step-00000002", broken)
    (broken / "adapter.safetensors").write_bytes((broken / "adapter.safetensors").read_bytes()[:100])

    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    resumed = run_recipe(tmp_path, recipe, resume=True)
    assert (checkpoints / "step-00000004.unreadable").is_dir()
    assert resumed.step == 6
    reference = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "reference", steps=6))
    assert_same_weights(resumed.final, reference.final)


def test_the_loss_is_logged_by_source_without_its_loss_weight(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=4, log_every=4, checkpoint_every=100)
    recipe["data"]["sources"] = [
        {"kind": "jsonl", "path": str(shapes), "name": "plain"},
        {"kind": "jsonl", "path": str(shapes), "name": "weighted", "loss_weight": 20},
    ]
    run_recipe(tmp_path, recipe)
    [record] = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    # 16 examples of the same captions: the two sources' token losses are alike, though one weighs 20 times more
    assert 0.5 < record["loss/plain"] / record["loss/weighted"] < 2


def test_source_losses_average_over_target_tokens_and_skip_what_says_nothing():
    losses = SourceLosses(["pages", "answers"])
    losses.add(["pages", "answers", "pages", ""], [30.0, 2.0, float("nan"), 0.0], [100, 2, 90, 0])
    losses.add(["pages"], [10.0], [50])
    assert losses.means(init_world("cpu")) == {"loss/pages": 40.0 / 150, "loss/answers": 1.0}
    losses.add(["answers"], [3.0], [3])
    assert losses.means(init_world("cpu")) == {"loss/answers": 1.0}  # reset after each call; unseen left out


def test_non_finite_losses_are_skipped_counted_and_stop_the_run_past_the_limit(tmp_path, readable_lm, shapes, monkeypatch):
    real_loss = VisionLanguageModel.loss
    calls = []

    def nan_on_second_call(self, *args, **kwargs):
        calls.append(1)
        loss, example_losses = real_loss(self, *args, **kwargs)
        return (loss * float("nan"), example_losses * float("nan")) if len(calls) == 2 else (loss, example_losses)

    monkeypatch.setattr(VisionLanguageModel, "loss", nan_on_second_call)
    result = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=4, checkpoint_every=100))
    assert result.step == 4 and len(calls) == 5  # 5 batches for 4 good steps
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["bad_steps"] for r in records] == [0, 1, 1, 1]
    assert all(math.isfinite(r["loss/jsonl"]) for r in records)  # the skipped step's losses are not logged
    assert all(torch.isfinite(t).all() for t in adapter(result.final).values())

    def infinite(self, *args, **kwargs):
        loss, example_losses = real_loss(self, *args, **kwargs)
        return loss * float("inf"), example_losses

    monkeypatch.setattr(VisionLanguageModel, "loss", infinite)
    with pytest.raises(TooManyBadSteps, match="3 steps had a non-finite loss"):
        run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "bad", max_bad_steps=2))


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=2)
    run_recipe(tmp_path, recipe)
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        run_recipe(tmp_path, recipe)
    # a finished run resumed with more steps goes on from where it stopped
    longer = run_recipe(tmp_path, recipe, resume=True, overrides=["run.steps=3"])
    assert longer.step == 3


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, readable_lm, shapes):
    plain = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "plain", steps=3))
    recomputed = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "recomputed", steps=3,
                                                  gradient_checkpointing=True))
    a, b = adapter(plain.final), adapter(recomputed.final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_the_gradient_is_the_global_mean_however_the_batch_is_split(tmp_path, readable_lm, shapes):
    gradients = {}
    for accumulation in (1, 2, 4):
        recipe = tiny_recipe(readable_lm, shapes, tmp_path / f"run-{accumulation}", grad_accum=accumulation)
        trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
        with torch.no_grad():  # open gates, so every adapter weight gets a gradient
            for block in trainer.model.cross_attn.values():
                block.attention_gate.fill_(0.5)
                block.ff_gate.fill_(0.5)
        examples = [next(trainer.mixture) for _ in range(4)]
        micro_batch = 4 // accumulation
        loss = trainer.backward([trainer.collate(examples[i : i + micro_batch]) for i in range(0, 4, micro_batch)])
        gradients[accumulation] = loss, {k: p.grad.clone() for k, p in trainer.model.trainable_parameters().items()}
    # captions of different lengths: a mean of micro-batch means would weigh tokens unequally
    assert len({trainer.collate([e]).target_weight for e in examples}) > 1
    for accumulation in (2, 4):
        assert gradients[accumulation][0] == pytest.approx(gradients[1][0], rel=1e-6)
        for key, grad in gradients[1][1].items():
            torch.testing.assert_close(gradients[accumulation][1][key], grad, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_trains_on_the_cpu_and_epochs_set_the_length(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=None, epochs=3)  # 4 examples, batch 4
    recipe["precision"] = "bf16"
    result = run_recipe(tmp_path, recipe)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert result.step == 3 and len(losses) == 3 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def test_fp16_needs_a_gpu(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run")
    recipe["precision"] = "fp16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        run_recipe(tmp_path, {**recipe, "run": {**recipe["run"], "device": "cpu"}})


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_skipped_and_counted_or_raises(tmp_path, readable_lm, shapes, workers):
    data = tmp_path / "data.jsonl"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    lines = shapes.read_text().splitlines()[:3] + [json.dumps({"image": "broken.png", "text": "a broken square"})]
    data.write_text("\n".join(line.replace('"image": "', f'"image": "{shapes.parent}/') if "broken" not in line else line
                              for line in lines) + "\n")
    # micro-batches of one example: the broken one leaves a micro-batch with nothing to learn
    run_recipe(tmp_path, tiny_recipe(readable_lm, data, tmp_path / "run", steps=2, grad_accum=4, data_workers=workers))
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["skipped"] for r in records] == [1, 2]  # 2 epochs of 4: the broken image came twice
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(0 < r["workers_busy"] <= 1 if workers else "workers_busy" not in r for r in records)

    strict = tiny_recipe(readable_lm, data, tmp_path / "strict", steps=2, data_workers=workers)
    strict["data"]["sources"][0]["on_error"] = "raise"
    with pytest.raises(DataError, match=r"source 'jsonl': .*broken.png"):
        run_recipe(tmp_path, strict)


def test_max_minutes_ends_the_run_and_its_cosine_early(tmp_path, readable_lm, shapes, monkeypatch):
    clock = iter(range(10**6))  # every reading of the clock is a second after the last
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock))
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=1000, max_minutes=1)
    recipe["schedule"] = {"name": "cosine", "min_lr_ratio": 0.1}
    result = run_recipe(tmp_path, recipe)
    assert 5 < result.step < 60 and result.final.is_dir()  # a minute of readings, not 1000 steps
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 3e-3 * 0.15  # near the floor (0.1) when time ran out


def test_time_used_ends_the_cosine_whatever_the_step():
    assert lr_factor(10, name="cosine", warmup=0, total=1000, min_ratio=0.1, time_used=1.0) == pytest.approx(0.1)
    assert lr_factor(10, name="cosine", warmup=0, total=1000, min_ratio=0.1, time_used=0.5) == pytest.approx(0.55)
    assert lr_factor(10, name="constant", warmup=0, total=1000, min_ratio=0.1, time_used=1.0) == 1.0


def test_the_gates_and_the_feature_projection_take_their_own_rates(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run")
    recipe["optim"] = {"lr": 1e-3, "gate_lr": 3e-2, "projection_lr": 1e-2, "weight_decay": 0.1}
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    group_of = {id(p): (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainable = trainer.model.trainable_parameters()
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trainable) == len(group_of)
    expected = {"resampler.project.weight": (1e-2, 0.1), "resampler.project.bias": (1e-2, 0.0),
                "cross_attn.1.ff_gate": (3e-2, 0.0), "resampler.latents": (1e-3, 0.1), "resampler.norm.weight": (1e-3, 0.0)}
    assert {name: group_of[id(trainable[name])] for name in expected} == expected
    assert trainer.scheduler.get_last_lr()[0] == 1e-3  # the logged rate is lr's


def test_train_only_trains_the_parameters_it_names_and_saves_the_rest_as_they_were(tmp_path, readable_lm, shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=2)
    recipe["optim"]["train_only"] = ["resampler.project.*", "*_gate"]
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    before = {name: value.clone() for name, value in trainer.model.adapter_state_dict().items()}
    after = adapter(trainer.fit().final)
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    gates = {name for name in before if name.endswith("_gate")}
    assert gates and changed == {"resampler.project.weight", "resampler.project.bias"} | gates

    recipe["optim"]["train_only"] = ["resampler.projection.*"]
    recipe["run"]["output_dir"] = str(tmp_path / "misnamed")
    with pytest.raises(ConfigError, match=r"'resampler.projection.\*' matches no trained parameter; .*resampler.project.\*"):
        Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))


def test_checkpoints_of_a_recipe_without_projection_lr_resume_and_a_changed_grouping_is_named(tmp_path, readable_lm,
                                                                                              shapes):
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "run", steps=2)
    recipe["optim"] = {"lr": 1e-3, "gate_lr": None, "weight_decay": 0.1}
    run_recipe(tmp_path, recipe)
    saved = tmp_path / "run" / "checkpoints" / "step-00000002" / "optimizer.pt"
    # the gates keep a group of their own at lr: the layout of checkpoints written before projection_lr existed
    assert [group["lr"] for group in torch.load(saved, weights_only=True)["param_groups"]] == [1e-3, 1e-3, 1e-3]
    recipe["optim"]["projection_lr"] = 1e-2
    with pytest.raises(ConfigError, match="step-00000002 cannot be resumed .* optim.projection_lr .* run.init_from="):
        run_recipe(tmp_path, recipe, resume=True, overrides=["run.steps=3"])
    assert saved.is_file()  # nothing renamed or lost
    del recipe["optim"]["projection_lr"]
    assert run_recipe(tmp_path, recipe, resume=True, overrides=["run.steps=3"]).step == 3


def test_init_from_starts_the_run_from_saved_adapters_that_fit(tmp_path, readable_lm, shapes):
    first = run_recipe(tmp_path, tiny_recipe(readable_lm, shapes, tmp_path / "first", steps=2))
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "second", init_from=str(first.final))
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    state = trainer.model.adapter_state_dict()
    for key, value in adapter(first.final).items():
        assert torch.equal(state[key], value), key

    other = tiny_recipe(readable_lm, shapes, tmp_path / "third", init_from=str(first.final))
    other["model"]["num_latents"] = 8
    with pytest.raises(ConfigError, match="run.init_from: .*does not fit this model"):
        Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", other)), world=init_world("cpu"))
    missing = tiny_recipe(readable_lm, shapes, tmp_path / "fourth", init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="run.init_from: .*nowhere holds no adapter.safetensors"):
        load_train_config(write_recipe(tmp_path / "c.yaml", missing))


def test_init_from_adapters_with_fewer_cross_attention_blocks_adds_fresh_ones(tmp_path, readable_lm, shapes, capsys):
    upper = tiny_recipe(readable_lm, shapes, tmp_path / "first", steps=2)
    upper["model"]["cross_attn_first_layer"] = 2  # blocks before layer 3 only
    first = run_recipe(tmp_path, upper)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "second", init_from=str(first.final))  # before 1 and 3
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    state, saved = trainer.model.adapter_state_dict(), adapter(first.final)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    fresh = sorted(key for key in state if key not in saved)
    assert fresh and all(key.startswith("cross_attn.1.") for key in fresh)
    assert not state["cross_attn.1.attention_gate"].any() and not state["cross_attn.1.ff_gate"].any()
    assert "no cross-attention before decoder layers [1]; those blocks start fresh" in capsys.readouterr().out

    back = tiny_recipe(readable_lm, shapes, tmp_path / "third", init_from=str(tmp_path / "first" / "final"))
    back["model"]["cross_attn_every_n_layers"] = 4  # blocks before layer 3 only: the saved ones had a place
    load_train_config(write_recipe(tmp_path / "c.yaml", back))
    trainer.model.save_pretrained(tmp_path / "both")
    back["run"]["init_from"] = str(tmp_path / "both")
    with pytest.raises(ConfigError, match=r"cross-attention before decoder layers \[1\], which model: leaves out; it "
                                          r"was trained with cross_attn_every_n_layers 2 and cross_attn_first_layer 0"):
        load_train_config(write_recipe(tmp_path / "c.yaml", back))


def test_init_from_adapters_without_global_latents_starts_them_fresh(tmp_path, readable_lm, shapes, capsys):
    grid = tiny_recipe(readable_lm, shapes, tmp_path / "first", steps=2)
    grid["model"].update(num_latents=6, grid_latents=True, resampler_grid_radius=0)  # resnet10t at 64x96: 2x3 cells
    first = run_recipe(tmp_path, grid)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "second", init_from=str(first.final))
    recipe["model"] = {**grid["model"], "global_latents": 2}
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    state, saved = trainer.model.adapter_state_dict(), adapter(first.final)
    assert sorted(key for key in state if key not in saved) == ["resampler.global_latents"]
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert "trained without global latents; the resampler's 2 start fresh" in capsys.readouterr().out


@pytest.mark.parametrize("saved_with, added", [({}, "half_stride_features"),
                                                ({"half_stride_features": True}, "quarter_stride_features")])
def test_init_from_adapters_without_finer_stride_features_widens_the_token_projection(tmp_path, readable_lm, shapes,
                                                                                       saved_with, added, capsys):
    first_recipe = tiny_recipe(readable_lm, shapes, tmp_path / "first", steps=2)
    first_recipe["model"].update(saved_with)
    first = run_recipe(tmp_path, first_recipe)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "second", steps=2, init_from=str(first.final))
    recipe["model"].update(saved_with, **{added: True})
    trainer = Trainer(load_train_config(write_recipe(tmp_path / "c.yaml", recipe)), world=init_world("cpu"))
    assert f"trained without {added}; the token projection grows" in capsys.readouterr().out
    saved, state = adapter(first.final), trainer.model.adapter_state_dict()
    projection, saved_projection = state["resampler.project.weight"], saved.pop("resampler.project.weight")
    assert torch.equal(projection[:, : saved_projection.shape[1]], saved_projection)
    assert projection.shape[1] > saved_projection.shape[1] and not projection[:, saved_projection.shape[1] :].any()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    result = trainer.fit()
    widened = VisionLanguageModel.from_pretrained(result.final)  # saved with the new width, and it reloads
    assert getattr(widened.config, added) and widened.resampler.project.weight[:, saved_projection.shape[1] :].any()

    back = tiny_recipe(readable_lm, shapes, tmp_path / "third", init_from=str(result.final))  # without the setting
    back["model"].update(saved_with)
    with pytest.raises(ConfigError, match=f"trained with model.{added}: true; set it here too"):
        load_train_config(write_recipe(tmp_path / "c.yaml", back))


def test_init_from_refuses_a_finer_stage_whose_channels_would_go_before_the_saved_ones(tmp_path, readable_lm, shapes):
    first_recipe = tiny_recipe(readable_lm, shapes, tmp_path / "first", steps=1)
    first_recipe["model"]["quarter_stride_features"] = True
    first = run_recipe(tmp_path, first_recipe)
    recipe = tiny_recipe(readable_lm, shapes, tmp_path / "second", init_from=str(first.final))
    recipe["model"].update(half_stride_features=True, quarter_stride_features=True)
    with pytest.raises(ConfigError, match="with model.quarter_stride_features but not model.half_stride_features"):
        load_train_config(write_recipe(tmp_path / "c.yaml", recipe))


def test_ctrl_c_to_the_process_group_with_loading_workers_writes_a_checkpoint(tmp_path, readable_lm, shapes):
    # a terminal's Ctrl-C reaches every process of the group: the workers must outlive it for the step to end
    run = tmp_path / "run"
    config = write_recipe(tmp_path / "c.yaml", tiny_recipe(readable_lm, shapes, run, steps=10_000, data_workers=2))
    process = subprocess.Popen([sys.executable, "-m", "vlm.train", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=one_thread_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-00000002").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130, process.stderr.read().decode()[-2000:]
    assert latest_checkpoint(run).name >= "step-00000002"  # the run stopped with a checkpoint, not hung
