"""One process or `torchrun` DDP: which rank this is, and errors that every rank shares."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from vaekit.errors import VaekitError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this call created the process group, so it also destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, fn: Callable[[], T]) -> T:
        """Run fn on every rank; if it fails on any rank, every rank raises that error.

        Without this, a rank-local failure (rank 0 finds the run dir locked, a full disk) leaves the other
        ranks waiting in their next collective until a timeout. Doubles as a barrier.
        """
        error: VaekitError | None = None
        result: T | None = None
        try:
            result = fn()
        except VaekitError as exc:
            error = exc
        if self.world > 1:
            messages: list[str] = [""] * self.world
            dist.all_gather_object(messages, str(error) if error else "")
            first = next((m for m in messages if m), "")
            if first and error is None:
                error = VaekitError(first)
        if error is not None:
            raise error
        return cast(T, result)

    def on_main(self, fn: Callable[..., object], *args: Any) -> None:
        """Run fn(*args) on rank 0 only (the one that writes files); the others wait for it and share its fate."""
        self.agree(lambda: fn(*args) if self.main else None)


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise VaekitError("WORLD_SIZE and LOCAL_RANK must be integers: launch with torchrun") from None
    if world <= 1:
        return Dist(), device
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise VaekitError(f"LOCAL_RANK {local_rank}, but this machine has {gpus} GPU(s): --nproc-per-node {gpus}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise VaekitError(f"cannot join the process group (WORLD_SIZE={world}): {reason}; use torchrun") from None
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), owns_group=owns), device
