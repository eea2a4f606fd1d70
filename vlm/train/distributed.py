"""One run over several processes: torchrun's environment -> a process group, DDP for the adapters, FSDP for a big LM.

Every process reads the same data stream and keeps its own slice of each global batch; gradients are
averaged over processes, and the loss is normalised by the target weight of the whole global batch, so K
processes take the same optimiser steps as one process with the same global batch.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlm.language_model import find_decoder_layers


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def sum(self, value: float) -> float:
        """`value` summed over processes (float64, so sums of equal inputs match across world sizes)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tensor.item()

    def all_ok(self, ok: bool) -> bool:
        """True when `ok` holds on every process: lets all of them fail together instead of hanging."""
        return self.sum(0.0 if ok else 1.0) == 0.0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run as one process.

    gloo on CPU, NCCL on CUDA. `device`: "auto" (CUDA when available), "cpu" or "cuda".
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but no CUDA GPU is visible to torch")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(rank=0, size=1, device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def close_world(world: World):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, world: World) -> nn.Module:
    """DDP over the model: only parameters that require a gradient are all-reduced.

    Every trained parameter takes part in every step (TrainStep ties them all to the loss), so DDP needs no
    search for unused ones. The frozen backbones' buffers are the same everywhere: they are not broadcast.
    """
    return DistributedDataParallel(
        model,
        device_ids=[world.device.index] if world.device.type == "cuda" else None,
        broadcast_buffers=False,
    )


def shard_language_model(model: nn.Module, world: World):
    """FSDP2: shard the frozen LM's decoder layers (the bulk of a big LM) over the processes.

    The adapters stay whole on every process (their gradients are averaged by `average_gradients`) and so do
    the token embeddings and output head, which the model calls outside the decoder's forward.
    """
    from torch.distributed.fsdp import fully_shard

    decoder = model.lm.base_model
    for layer in find_decoder_layers(model.lm, model.config.decoder_layers_attr):
        fully_shard(layer)
    fully_shard(decoder, ignored_params=set(model.lm.get_input_embeddings().parameters()))


def average_gradients(parameters: list[nn.Parameter], world: World):
    """Average gradients over processes in one flat all-reduce (what DDP does, for the FSDP mode's adapters)."""
    if not world.distributed:
        return
    flat = torch.cat([p.grad.flatten() for p in parameters])  # TrainStep gives every one a gradient
    dist.all_reduce(flat)
    flat /= world.size
    for p, piece in zip(parameters, flat.split([p.numel() for p in parameters])):
        p.grad.copy_(piece.view_as(p))
