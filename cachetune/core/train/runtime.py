"""Where a training process runs: device, precision, threads, and its rank in a multi-process launch.

``torchrun`` and ``accelerate launch`` both set ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``
(and the rendezvous address); with ``WORLD_SIZE > 1`` a process group is opened (NCCL on
CUDA, gloo on CPU). Gradients of the few LoRA parameters are averaged by hand in one
all-reduce per step rather than through ``DistributedDataParallel``: each step runs several
forwards before its backward, which DDP's hooks do not expect, and the tensor is tiny.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.train.checkpoints import rng_state


@dataclass
class Runtime:
    """Where this process runs: device, and its place in a torchrun / accelerate launch."""

    device: object
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    precision: str = "fp32"
    threads: int = 1
    distributed: bool = field(default=False)

    @property
    def main(self) -> bool:
        return self.rank == 0


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads do not speed up matmuls)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, cpu = set(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            phys = core = None
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip() and cpu is not None:
                    if cpu in allowed:
                        cores.add((phys, core, None if core is not None else cpu))
                    cpu = phys = core = None
            if cpu is not None and cpu in allowed:
                cores.add((phys, core, None if core is not None else cpu))
    except OSError:
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def init_runtime(precision: str = "auto", threads: Optional[int] = None) -> Runtime:
    """Device, precision, torch threads and (under torchrun / accelerate) the process group."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if precision == "auto":
        # fp32 on every device: on an H200, MiniLM-L6 trained at 2,916 triplets/s in fp32 and
        # 1,563 under bf16 autocast (bench/devices.py, README "On a GPU"); bf16 is one option away.
        precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise CachetuneError("--precision fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    threads = threads or max(1, physical_cores() // max(1, local_world))
    torch.set_num_threads(threads)
    runtime = Runtime(device, world, rank, local_rank, precision, threads)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        runtime.distributed = True
    return runtime


def sync_gradients(trainable: List, loss, rt: Runtime) -> float:
    """Average LoRA gradients (and the loss, for the log) across ranks in one all-reduce."""
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= rt.world_size
    offset = 0
    for p, g in zip(trainable, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n
    return flat[-1].item()


def gather_rng_states(rt: Runtime) -> list:
    """Every rank's RNG states (a collective under a process group): a checkpoint keeps them all."""
    state = rng_state()
    if not rt.distributed:
        return [state]
    import torch.distributed as dist

    states = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return states
