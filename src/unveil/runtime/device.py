"""Device and DDP helpers of a training step: autocast, host-to-device copies, no_sync.

Shared by the training loop (:mod:`unveil.train.loop`, which feeds the batches) and the
family trainers (:mod:`unveil.generative.trainers`, which run the steps).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from unveil.errors import UnveilError


def autocast(cfg: Any, device: torch.device):
    """The autocast context of ``cfg.train.amp`` on ``device`` (a no-op for ``none``)."""
    if cfg.train.amp == "none":
        return contextlib.nullcontext()
    if device.type == "cpu" and cfg.train.amp == "fp16":
        raise UnveilError("train.amp=fp16 needs a GPU; use train.amp=bf16 or none on CPU.")
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to a GPU through pinned memory and without blocking the host.

    A copy from pageable memory makes the host wait for the device's queue to drain (the
    staging buffer is reused), i.e. a synchronisation per copy; from pinned memory the
    copy is queued and the host goes on (PyTorch's pinned-memory cache keeps the source
    alive until the copy has run).
    """
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def unwrap(m: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``m`` itself otherwise)."""
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def micro_context(mod: nn.Module, last: bool):
    """Gradient accumulation under DDP: only the ``last`` micro-batch all-reduces."""
    if isinstance(mod, nn.parallel.DistributedDataParallel) and not last:
        return mod.no_sync()
    return contextlib.nullcontext()


__all__ = ["autocast", "micro_context", "to_device", "unwrap"]
