"""Multi-process evaluation through torch.distributed, as launched by ``torchrun``.

Each process evaluates a disjoint shard of the data set; counts are summed over processes and
process 0 prints. Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every function
here acts on a single process and nothing is initialised.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from .errors import InputError


def launched() -> bool:
    """True under ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing a name torch does not know, CUDA on a machine without a CUDA GPU
    and a GPU index the machine lacks."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {device} was asked for but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def start(device: str) -> torch.device:
    """Join the process group when ``launched()`` (nccl for CUDA, gloo for CPU); returns this
    process's device (``cuda:LOCAL_RANK`` for CUDA under torchrun)."""
    device = resolve_device(device)
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(dataset: Dataset) -> Dataset:
    """This process's disjoint share of ``dataset``: items rank, rank + world, rank + 2 world, ...

    No item is repeated (unlike DistributedSampler's padding), so summed counts are exact."""
    world = world_size()
    if world == 1:
        return dataset
    if len(dataset) < world:
        raise InputError(f"{len(dataset)} images cannot be split over {world} processes")
    return Subset(dataset, range(rank(), len(dataset), world))


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``values`` (any shape, on the CPU) reduced over all processes with ``op`` ('sum' or 'max')."""
    if not dist.is_initialized():
        return values
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if dist.get_backend() == "nccl":
        on_device = values.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=reduce_op)
        return on_device.cpu()
    values = values.clone()
    dist.all_reduce(values, op=reduce_op)
    return values
