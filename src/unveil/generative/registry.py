"""The family registry, behaviour half: what a generator family does, behind one protocol.

Code outside ``unveil.generative`` never compares ``model.family`` to a name: it asks the
family object of the config (:func:`family_for`) for what it needs.  The names and the
torch-free flags are in :mod:`unveil.family_registry` (the config and the network builder,
which sit below this layer, read them there); each :class:`~unveil.family_registry.FamilySpec`
names its behaviour class here, and :data:`FAMILIES` is the live view name -> family object.

A family object (:class:`GenerativeFamily`) provides:

* the flags of its spec (``needs_discriminator``, ``time_conditioned``,
  ``output_activation_default``, ``allows_noise_input``, ``supports_inversion``,
  ``iterative``);
* ``process(cfg)``: the process object (:class:`~unveil.generative.gan.GanProcess`,
  :class:`~unveil.generative.diffusion.DiffusionProcess`,
  :class:`~unveil.generative.rflow.RFlowProcess`);
* ``sample_volume(cfg, net, window, mask, cond, noise, ...)``: a whole volume from the
  starting noise, the sliding window given by the caller (``unveil.infer`` owns it);
* ``check_sampling(cfg, steps, guidance_scale, where)`` / ``sampling_steps(cfg, steps)``:
  the ``--steps`` / ``--guidance-scale`` options against a checkpoint;
* ``invert(cfg, denoise, image, steps)`` where ``supports_inversion``
  (``check_inversion()`` refuses ``--from-scan`` otherwise);
* ``describe(cfg)``: the details after the family's name in ``unveil inspect``;
* ``trainer(cfg, gen, disc)``: the object that runs the family's training steps
  (:class:`~unveil.generative.trainers.Trainer`: optimisers, grad scalers, the step with
  gradient accumulation and DDP); :func:`unveil.train.loop.train` calls only that.

The built-in families are ``gan`` (:class:`GanFamily`), ``diffusion``
(:class:`DiffusionFamily`) and ``rflow`` (rectified flow,
:class:`unveil.generative.rflow.RFlowFamily`).  The two iterative ones differ only by their
process: :class:`DenoisingFamily` holds what they share (whole-volume sampling with
classifier-free guidance, the ``--steps`` / ``--guidance-scale`` checks, inversion, the
trainer), and each subclass gives its ``process`` and ``describe``.  Both read the
``diffusion`` config section; a config or checkpoint that still spells rectified flow as
``model.family: diffusion`` with ``diffusion.process: rflow`` is read as ``model.family:
rflow`` by config validation (:func:`unveil.family_registry.upgrade_config_tree`), so it
samples, inverts and trains as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from unveil.errors import UnveilError
from unveil.family_registry import (
    SPECS,
    FamilySpec,
    family_spec,
    register_family_spec,
    unregister_family_spec,
)

#: ``window(fn, progress=False)``: ``fn(x, mask, t, cond)`` run window by window on a whole
#: scan (:func:`unveil.infer.sliding.windowed` with the config's window settings).
Window = Callable[..., Callable[..., torch.Tensor]]


class GenerativeFamily:
    """A generator family: the flags of its :class:`FamilySpec` and the hooks that need torch.

    Subclass it, override the hooks your family supports, and register a
    :class:`~unveil.family_registry.FamilySpec` whose ``behaviour`` is the subclass (see
    docs/extending.md).  The base hooks raise or answer "not supported".
    """

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---------------------------------------------------------------- flags (from the spec)
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_discriminator(self) -> bool:
        return self.spec.needs_discriminator

    @property
    def time_conditioned(self) -> bool:
        return self.spec.time_conditioned

    @property
    def output_activation_default(self) -> str:
        return self.spec.output_activation_default

    @property
    def allows_noise_input(self) -> bool:
        return self.spec.allows_noise_input

    @property
    def supports_inversion(self) -> bool:
        return self.spec.supports_inversion

    @property
    def iterative(self) -> bool:
        return self.spec.iterative

    # ---------------------------------------------------------------------------- hooks
    def process(self, cfg: Any) -> Any:
        """The process object of ``cfg`` (what training and sampling call)."""
        raise NotImplementedError(f"family '{self.name}' defines no process.")

    def sample_volume(
        self,
        cfg: Any,
        net: Callable[..., torch.Tensor],
        window: Window,
        mask: torch.Tensor,
        cond: Any,
        noise: torch.Tensor,
        *,
        guidance_scale: float | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """The whole volume ``(1, C, X, Y, Z)`` generated from ``noise`` under ``mask``/``cond``.

        ``net(x, mask, t, cond)`` is the generator (in the caller's precision); ``window``
        wraps a function of that signature so that it runs window by window.  A
        counterfactual pair passes the same ``noise``: whatever else is random must be drawn
        from it (see :func:`noise_seed`), so that the pair differs only by its prompt.
        """
        raise NotImplementedError(f"family '{self.name}' cannot generate a volume.")

    def check_sampling(
        self,
        cfg: Any,
        steps: int | None,
        guidance_scale: float | None,
        where: str,
        max_guidance: float,
    ) -> None:
        """Raise :class:`UnveilError` when ``--steps`` / the guidance do not suit ``cfg``.

        ``where`` names the checkpoint in the message; ``max_guidance`` is the largest
        guidance scale the caller accepts.
        """

    def sampling_steps(self, cfg: Any, steps: int | None) -> int | None:
        """The number of sampling steps used (None: the family takes no steps)."""
        return None

    def invert(
        self,
        cfg: Any,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        image: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        """The starting noise that regenerates ``image`` (``supports_inversion`` only)."""
        self.check_inversion()
        raise NotImplementedError(f"family '{self.name}' declares inversion but defines none.")

    def check_inversion(self) -> None:
        """Raise :class:`UnveilError` (``--from-scan``) unless the family supports inversion."""
        if not self.supports_inversion:
            raise UnveilError(
                f"--from-scan inverts a model of a family that supports inversion "
                f"({', '.join(inverting_family_names()) or 'none'}); this checkpoint is a "
                f"{self.name} model."
            )

    def describe(self, cfg: Any) -> str:
        """The details shown after the family's name by ``unveil inspect`` (one line)."""
        return self.spec.description

    def trainer(self, cfg: Any, gen: torch.nn.Module, disc: torch.nn.Module | None) -> Any:
        """The :class:`~unveil.generative.trainers.Trainer` of ``gen`` (and ``disc``, built
        when the family ``needs_discriminator``): its optimisers and its training step."""
        raise NotImplementedError(f"family '{self.name}' defines no trainer.")


class GanFamily(GenerativeFamily):
    """The conditional GAN: one (windowed) generator pass, output clamped to [-1, 1]."""

    def process(self, cfg: Any) -> Any:
        from unveil.generative.gan import GanProcess

        return GanProcess(cfg.gan)

    def sample_volume(
        self,
        cfg,
        net,
        window,
        mask,
        cond,
        noise,
        *,
        guidance_scale=None,
        steps=None,
        progress=False,
    ):
        run = window(net, progress=progress)
        x = noise if cfg.model.noise_input else None
        return run(x, mask, None, cond).clamp(-1.0, 1.0)

    def describe(self, cfg: Any) -> str:
        return f"{cfg.gan.loss}, L1 x{cfg.gan.l1_weight}"

    def trainer(self, cfg, gen, disc):
        from unveil.generative.trainers import GanTrainer

        if disc is None:
            raise ValueError("the gan family trains a discriminator; build_models gave none.")
        return GanTrainer(cfg, gen, disc)


class DenoisingFamily(GenerativeFamily):
    """An iterative family that reads the ``diffusion`` config section: sampled from noise
    in ``diffusion.sample_steps`` guided steps, inverted, trained on one denoising loss.

    A subclass gives ``process(cfg)`` (a
    :class:`~unveil.generative.diffusion.DenoisingProcess`) and ``describe``; the other
    hooks call only the process's ``model_fn``, ``sample``, ``invert`` and its trainer.
    """

    @staticmethod
    def variant(cfg: Any) -> str:
        """The training process of the config (``diffusion.process``): ``ddpm`` or ``rflow``."""
        return str(cfg.diffusion.process)

    def sample_volume(
        self,
        cfg,
        net,
        window,
        mask,
        cond,
        noise,
        *,
        guidance_scale=None,
        steps=None,
        progress=False,
    ):
        process = self.process(cfg)
        scale = cfg.diffusion.guidance_scale if guidance_scale is None else guidance_scale

        def guided(x, m, t, c):
            # Classifier-free guidance inside each window: one batched call per window.
            return process.model_fn(net, m, c, scale)(x, t)

        run = window(guided)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return run(x_t, mask, t, cond)

        # DDPM and DDIM with eta > 0 draw fresh noise at every step: seed it from the
        # starting noise, so a counterfactual pair (same starting noise) also shares the
        # per-step noise and differs only by its prompt.
        step_noise = torch.Generator(device=noise.device).manual_seed(noise_seed(noise))
        return process.sample(denoise, noise, steps=steps, progress=progress, generator=step_noise)

    def check_sampling(self, cfg, steps, guidance_scale, where, max_guidance):
        import math

        diff = cfg.diffusion
        if steps is not None and steps > diff.timesteps:
            raise UnveilError(
                f"--steps {steps} is more than the {diff.timesteps} diffusion timesteps "
                f"{where} was trained with; give a value between 1 and {diff.timesteps}."
            )
        own = float(diff.guidance_scale)
        limit = max_guidance
        if guidance_scale is None and not (math.isfinite(own) and 0.0 <= own <= limit):
            raise UnveilError(
                f"{where} sets diffusion.guidance_scale to {own}, which is "
                f"not a finite number between 0 and {limit:g}; pass "
                "--guidance-scale with a value such as 3."
            )

    def sampling_steps(self, cfg, steps):
        return int(steps if steps is not None else cfg.diffusion.sample_steps)

    def invert(self, cfg, denoise, image, steps=None):
        return self.process(cfg).invert(denoise, image, steps=steps)

    def trainer(self, cfg, gen, disc):
        from unveil.generative.trainers import DiffusionTrainer

        return DiffusionTrainer(cfg, gen, process=self.process(cfg))


class DiffusionFamily(DenoisingFamily):
    """Denoising diffusion: DDPM training, DDIM/DDPM sampling, DDIM inversion."""

    def process(self, cfg: Any) -> Any:
        from unveil.generative.diffusion import DiffusionProcess

        return DiffusionProcess(cfg.diffusion)

    def describe(self, cfg: Any) -> str:
        d = cfg.diffusion
        return (
            f"{d.process}, {d.prediction}, T={d.timesteps}, sampler {d.sampler} x{d.sample_steps}"
        )


def noise_seed(noise: torch.Tensor) -> int:
    """A 63-bit seed determined by the bytes of ``noise`` (same noise, same seed)."""
    digest = hashlib.sha256(noise.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------------------ registry

_objects: dict[str, tuple[FamilySpec, GenerativeFamily]] = {}


def get_family(name: str) -> GenerativeFamily:
    """The family object of ``name`` (``ValueError`` naming the registered ones if unknown)."""
    spec = family_spec(name)
    cached = _objects.get(name)
    if cached is None or cached[0] is not spec:  # built once per registered spec
        obj = spec.resolve_behaviour()(spec)
        if not isinstance(obj, GenerativeFamily):
            raise TypeError(
                f"family '{name}': its behaviour must build a GenerativeFamily, "
                f"not {type(obj).__name__}."
            )
        cached = _objects[name] = (spec, obj)
    return cached[1]


def family_for(cfg: Any) -> GenerativeFamily:
    """The family object of a :class:`~unveil.config.Config` (its ``model.family``)."""
    return get_family(cfg.model.family)


def register_family(spec: FamilySpec, *, replace: bool = False) -> GenerativeFamily:
    """Register ``spec`` (config validation accepts its name at once); its family object."""
    register_family_spec(spec, replace=replace)
    _objects.pop(spec.name, None)
    return get_family(spec.name)


def unregister_family(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a toy family)."""
    unregister_family_spec(name)
    _objects.pop(name, None)


def inverting_family_names() -> tuple[str, ...]:
    """The registered families that support inversion (``--from-scan``)."""
    return tuple(n for n, s in SPECS.items() if s.supports_inversion)


class _Families(Mapping[str, GenerativeFamily]):
    """Live read-only view name -> family object of the registry (later entries included)."""

    def __getitem__(self, name: str) -> GenerativeFamily:
        if name not in SPECS:
            raise KeyError(name)
        return get_family(name)

    def __iter__(self) -> Iterator[str]:
        return iter(SPECS)

    def __len__(self) -> int:
        return len(SPECS)

    def __repr__(self) -> str:
        return f"FAMILIES({list(self)!r})"


#: name -> family object, always in step with :data:`unveil.family_registry.SPECS`.
FAMILIES: Mapping[str, GenerativeFamily] = _Families()

__all__ = [
    "FAMILIES",
    "DenoisingFamily",
    "DiffusionFamily",
    "FamilySpec",
    "GanFamily",
    "GenerativeFamily",
    "family_for",
    "get_family",
    "inverting_family_names",
    "noise_seed",
    "register_family",
    "unregister_family",
]
