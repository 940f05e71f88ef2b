"""Exponential moving average of a network's weights, for sampling.

Built on ``torch.optim.swa_utils.AveragedModel`` (deep copy, ``n_averaged`` counter,
device/dtype-grouped foreach updates, ``state_dict``).  Its stock
``get_ema_multi_avg_fn(decay)`` uses a fixed decay; ours adds the usual warm-up
``decay_n = min(decay, (1 + n) / (10 + n))`` (TensorFlow's ``num_updates``, diffusers'
``EMAModel``): with ``decay = 0.999`` the average would otherwise remember its first
weights for thousands of steps, so early samples and early checkpoints would be
dominated by what the network looked like at step one.

Buffers are averaged with the parameters (``use_buffers=True``) so normalisation
statistics, if any, match the averaged weights; integer buffers (counters) are copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, num_updates: int, warmup: bool = True) -> float:
    """The decay used for the update that follows ``num_updates`` earlier ones."""
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def _ema_multi_avg_fn(decay: float, warmup: bool) -> Callable[[list, list, Any], None]:
    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        d = ema_decay(decay, int(num_averaged), warmup)
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - d)
        else:  # counters such as BatchNorm's num_batches_tracked: averaging means nothing
            for e, c in zip(ema, current, strict=True):
                e.copy_(c)

    return update


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel / ``torch.compile`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


class EMA:
    """EMA of a network's parameters and buffers.

    Args:
        model: the network being trained (a DDP or compiled wrapper is unwrapped).
        decay: the long-run decay (``train.ema_decay``), in ``[0, 1)``.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` for the ``n``-th update.

    The first :meth:`update` copies the model's weights (``AveragedModel`` semantics), so
    the average never contains the random initialisation it was built from.

    Use :attr:`module` to sample with the averaged weights directly, or
    :meth:`average_parameters` to swap them into the training network for a while.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.averaged = AveragedModel(
            _unwrap(model),
            multi_avg_fn=_ema_multi_avg_fn(self.decay, self.warmup),
            use_buffers=True,
        )
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class as the model)."""
        return self.averaged.module

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        self.averaged.update_parameters(_unwrap(model))

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and the update counter (the counter drives the warm-up)."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers with the averaged ones."""
        _unwrap(module).load_state_dict(self.module.state_dict())

    @contextmanager
    def average_parameters(self, module: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``module`` carries the averaged weights; its own come back after."""
        target = _unwrap(module)
        backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
        self.copy_to(target)
        try:
            yield module
        finally:
            target.load_state_dict(backup)
