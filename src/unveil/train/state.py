"""What a checkpoint holds of a run, and how a resumed run takes it back.

:class:`RunState` is everything that changes during training besides the weights: the
step and the random generators every draw comes from.  :func:`checkpoint_payload` puts
it, the weights, the optimiser and EMA states into one mapping; :func:`restore_run`
loads such a mapping back into freshly built objects, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unveil.config import Config
from unveil.generative.ema import EMA
from unveil.generative.trainers import Trainer
from unveil.model import ModelMeta
from unveil.runtime.device import unwrap


@dataclass
class RunState:
    """Everything that changes during training and goes into a checkpoint."""

    step: int = 0
    sampler_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    prompt_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))
    torch_gen: torch.Generator = field(default_factory=torch.Generator)

    @classmethod
    def for_seed(cls, seed: int) -> RunState:
        """The state at step 0 of a run with ``train.seed`` = ``seed``."""
        return cls(
            step=0,
            sampler_rng=np.random.default_rng([seed, 1]),
            prompt_rng=np.random.default_rng([seed, 2]),
            torch_gen=torch.Generator().manual_seed(seed + 3),
        )


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    # PCG64's 128-bit integers are stored as strings: weights_only loading accepts them
    # either way, but strings keep the checkpoint readable by any tool.
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {k: str(v) for k, v in st["state"].items()},
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _set_rng_state(rng: np.random.Generator, st: dict[str, Any]) -> None:
    rng.bit_generator.state = {
        "bit_generator": st["bit_generator"],
        "state": {k: int(v) for k, v in st["state"].items()},
        "has_uint32": st["has_uint32"],
        "uinteger": st["uinteger"],
    }


def checkpoint_payload(
    cfg: Config,
    meta: ModelMeta,
    state: RunState,
    gen: nn.Module,
    disc: nn.Module | None,
    family: Trainer,
    ema: EMA,
) -> dict[str, Any]:
    """The mapping a checkpoint file holds (weights without their DDP wrappers)."""
    return {
        "config": cfg.to_dict(),
        "step": state.step,
        "meta": meta.to_dict(),
        "models": {
            "generator": unwrap(gen).state_dict(),
            **({"discriminator": unwrap(disc).state_dict()} if disc is not None else {}),
        },
        "optimizers": family.optimizer_states(),
        "ema": ema.state_dict(),
        "rng": {
            "sampler": _rng_state(state.sampler_rng),
            "prompt": _rng_state(state.prompt_rng),
            "torch_gen": state.torch_gen.get_state(),
            "torch": torch.get_rng_state(),
        },
    }


def restore_run(
    loaded: dict[str, Any],
    gen: nn.Module,
    disc: nn.Module | None,
    family: Trainer,
    ema: EMA,
    state: RunState,
) -> None:
    """Load a checkpoint's weights, optimiser, EMA and random states (the global torch
    generator's too) into the objects of a resumed run, before DDP wraps them."""
    gen.load_state_dict(loaded["models"]["generator"])
    if disc is not None:
        disc.load_state_dict(loaded["models"]["discriminator"])
    family.load_optimizers(loaded["optimizers"])
    ema.load_state_dict(loaded["ema"])
    state.step = int(loaded["step"])
    _set_rng_state(state.sampler_rng, loaded["rng"]["sampler"])
    _set_rng_state(state.prompt_rng, loaded["rng"]["prompt"])
    state.torch_gen.set_state(loaded["rng"]["torch_gen"])
    torch.set_rng_state(loaded["rng"]["torch"])
