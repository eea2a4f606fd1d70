"""Training checkpoints: everything a run needs to continue exactly, written so that a crash never leaves a broken one.

A checkpoint is a folder `output_dir/checkpoints/step-00000120/`:
    adapter.safetensors, config.json   the model as save_pretrained writes it (so vlm.load() opens it too)
    optimizer.pt                       the optimiser's state_dict: tensors and numbers only, read back with
                                       torch.load(weights_only=True), never an arbitrary pickle
    rng-{rank}.safetensors             each process's torch RNG states; python and numpy states in its metadata
    state.json                         step, scheduler, data position, counters
It is written into a hidden folder beside the others and renamed into place only once complete: a crash, a
SIGKILL or a full disk midway leaves the earlier checkpoints as they were, and no folder named step-* is ever
half written.
"""

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlm.config import ConfigError
from vlm.fileio import atomic_write
from vlm.model import WEIGHTS_FILE
from vlm.train.distributed import World

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
STEP_DIR = re.compile(r"step-(\d+)")
log = logging.getLogger("vlm.train")


class CheckpointError(RuntimeError):
    pass


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict  # state.json: scheduler, data position, counters


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: Path, *, step: int, model, optimizer, state: dict, world: World, keep: int) -> Path:
    """Write the checkpoint of `step` atomically, then delete all but the newest `keep`. Collective under DDP.

    Raises CheckpointError (on every process) when any write fails; the earlier checkpoints stay intact.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier attempt
        tmp.mkdir(parents=True)
    world.barrier()
    error = _attempt(lambda: _save_rng(tmp / f"rng-{world.rank}.safetensors"))
    if world.all_ok(error is None) and world.is_main:  # every process's RNG file is in before the rename

        def finish():
            model.save_pretrained(tmp)
            atomic_write(tmp / OPTIMIZER_FILE, lambda path: torch.save(optimizer.state_dict(), path))
            full = {"step": step, "world_size": world.size, **state}
            atomic_write(tmp / STATE_FILE, lambda path: path.write_text(json.dumps(full, indent=1)))
            os.replace(tmp, final)
            _fsync_dir(root)

        error = _attempt(finish)
    if not world.all_ok(error is None):
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        kept = f"the latest intact checkpoint is {previous}" if previous else "there is no earlier checkpoint"
        why = error or "failed on another process"
        raise CheckpointError(f"could not write the checkpoint of step {step} ({why}); {kept}") from error
    if world.is_main:
        for old in _checkpoints(root)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def _attempt(write) -> OSError | None:
    try:
        write()
    except OSError as e:  # a full disk, a lost mount, permissions
        return e
    return None


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = _checkpoints(checkpoint_dir(output_dir))
    return found[0] if found else None


def load_checkpoint(output_dir: Path, *, model, optimizer, world: World) -> Checkpoint | None:
    """Restore the newest checkpoint that loads; None if there is none.

    An unreadable one is reported and renamed `step-N.unreadable` (kept for a look, out of the way of the
    checkpoint of that step that the continued run will write).

    Loads the adapter weights into `model`, the optimiser state and this process's RNG states; returns the rest.
    """
    for path in _checkpoints(checkpoint_dir(output_dir)):
        try:
            state = json.loads((path / STATE_FILE).read_text())
            optimizer_state = torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
            model.load_adapters(path / WEIGHTS_FILE)
        except (OSError, ValueError, RuntimeError) as e:
            if world.is_main:
                log.warning("skipping checkpoint %s: cannot read it (%s)", path, e)
                os.replace(path, path.with_name(f"{path.name}.unreadable"))
            continue
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError as e:  # its parameter groups differ: optim.projection_lr or optim.train_only changed
            raise ConfigError(
                f"{path} cannot be resumed with this recipe's optimiser ({e}): its parameter groups follow the "
                f"optim.projection_lr and optim.train_only it was written with. Set them as then, or start a new "
                f"run from the checkpoint with run.init_from={path}") from e
        rng = path / f"rng-{world.rank}.safetensors"
        if state["world_size"] == world.size:
            _load_rng(rng)
        elif world.is_main:
            log.warning("%s was written by %d processes, this run has %d: training continues, but not bit for bit "
                        "as the original run would have", path, state["world_size"], world.size)
        return Checkpoint(path=path, step=state["step"], state=state)
    return None


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _save_rng(path: Path):
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(mt_state), gauss]),
        "numpy": json.dumps([name, keys.tolist(), pos, has_gauss, cached]),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_rng(path: Path):
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        torch.set_rng_state(f.get_tensor("torch"))
        cuda = sorted((k for k in f.keys() if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(k) for k in cuda])
    version, mt_state, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _fsync_dir(path: Path):
    """Make a rename durable: fsync the folder that holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
