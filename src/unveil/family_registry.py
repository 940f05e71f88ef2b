"""The family registry, torch-free half: the names and flags of the generator families.

A *generator family* (the config's ``model.family``) is a :class:`FamilySpec` in
:data:`SPECS`.  The spec holds what the light layers need without importing torch:

* config validation (:mod:`unveil.config`): the allowed values of ``model.family`` are the
  registered names, and each spec's ``config_checks`` run on the whole config;
* the network builder (:mod:`unveil.nn.build`), which sits below ``unveil.generative``:
  the UNet's role (``time_conditioned``, ``output_activation_default``,
  ``allows_noise_input``) and whether a discriminator is built (``needs_discriminator``).

The behaviour that needs torch (the process object, whole-volume sampling, inversion, the
``unveil inspect`` line) lives in :mod:`unveil.generative.registry`; a spec names it as a
``"package.module:attribute"`` string (``behaviour``), imported on first use, as
:mod:`unveil.fusion_registry` does for its modules.  A callable is accepted too, for a
family registered at run time (a test, a plug-in).

Three families are built in: ``gan``, ``diffusion`` (DDPM/DDIM) and ``rflow`` (rectified
flow).  ``rflow`` is an entry of its own: its behaviour class and process are in
:mod:`unveil.generative.rflow`; it shares the ``diffusion`` config section with the
diffusion family (timesteps, guidance, sampling steps, loss, learning rate), so it needs no
section of its own.

A spec may also rewrite the raw config before validation (``config_upgrades``, run by
:func:`upgrade_config_tree`): the ``rflow`` entry fills its own ``diffusion.process`` and
``diffusion.sampler`` when a config leaves them out, and reads the older spelling of
rectified flow, ``model.family: diffusion`` with ``diffusion.process: rflow`` (configs and
checkpoints written before ``rflow`` was a family), as ``model.family: rflow``: the same
process, the same weights, the same numbers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Factory = str | Callable[..., Any]

#: ``check(cfg) -> None``: raise ``ValueError`` (one sentence naming config keys) when the
#: whole config does not suit the family.  Run by :class:`unveil.config.Config`'s validation.
ConfigCheck = Callable[[Any], None]

#: ``upgrade(tree) -> tree``: rewrite the raw config (the mapping of sections read from a
#: YAML file or a checkpoint, before validation) into the form this family expects: fill
#: the family's own defaults, or map an older spelling of the family to it.  It returns a
#: new mapping (never edits ``tree``), or ``tree`` itself when it has nothing to do.  Run on
#: every config by :func:`upgrade_config_tree`, whatever its family.
ConfigUpgrade = Callable[[dict[str, Any]], dict[str, Any]]

#: ``model.family`` when a config does not set it.
DEFAULT_FAMILY = "diffusion"


@dataclass(frozen=True)
class FamilySpec:
    """One generator family.

    Attributes:
        name: the config value (``model.family``), stored in checkpoints and results.
        description: one line on what the family is.
        behaviour: the :class:`unveil.generative.registry.GenerativeFamily` subclass (or a
            factory ``(spec) -> family object``), as a callable or a ``"module:attribute"``
            string imported on first use.
        needs_discriminator: training builds and trains a discriminator beside the generator.
        time_conditioned: the UNet takes the diffusion time ``t`` (a time embedding).
        output_activation_default: the UNet's output when ``model.out_activation`` is
            ``auto``: ``tanh`` (an image in [-1, 1]) or ``linear``.
        allows_noise_input: ``model.noise_input`` (a noise channel at the UNet's input) is
            allowed.
        supports_inversion: a real scan can be inverted to its starting noise
            (``unveil counterfactual --from-scan``).
        iterative: sampling takes steps and a guidance scale (``--steps``,
            ``--guidance-scale`` apply); False: one network pass.
        config_checks: family-specific checks of the whole config (see :data:`ConfigCheck`).
        display_name: the name tables and figures print (default: ``name``).
        config_upgrades: rewrites of the raw config before validation (see
            :data:`ConfigUpgrade`).
    """

    name: str
    description: str
    behaviour: Factory
    needs_discriminator: bool = False
    time_conditioned: bool = False
    output_activation_default: Literal["tanh", "linear"] = "tanh"
    allows_noise_input: bool = False
    supports_inversion: bool = False
    iterative: bool = False
    config_checks: tuple[ConfigCheck, ...] = field(default=())
    config_upgrades: tuple[ConfigUpgrade, ...] = field(default=())
    display_name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a family needs a non-empty name, not {self.name!r}.")
        if self.output_activation_default not in ("tanh", "linear"):
            raise ValueError(
                f"family '{self.name}': output_activation_default must be tanh or linear, "
                f"not {self.output_activation_default!r}."
            )

    def check_config(self, cfg: Any) -> None:
        """Run the family's ``config_checks`` on the whole config (``ValueError`` if refused)."""
        for check in self.config_checks:
            check(cfg)

    def resolve_behaviour(self) -> Callable[..., Any]:
        """The behaviour factory, imported on first use."""
        ref = self.behaviour
        if callable(ref):
            return ref
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)


#: The registry, name -> spec.
SPECS: dict[str, FamilySpec] = {}


def register_family_spec(spec: FamilySpec, *, replace: bool = False) -> FamilySpec:
    """Add ``spec`` to :data:`SPECS` (``ValueError`` if its name is taken and not ``replace``)."""
    if not isinstance(spec, FamilySpec):
        raise TypeError(f"register_family_spec takes a FamilySpec, not {type(spec).__name__}.")
    if spec.name in SPECS and not replace:
        raise ValueError(
            f"family '{spec.name}' is already registered; pass replace=True to redefine it."
        )
    SPECS[spec.name] = spec
    return spec


def unregister_family_spec(name: str) -> None:
    """Remove ``name`` from :data:`SPECS` (for tests that register a toy family)."""
    SPECS.pop(name, None)


def family_names() -> tuple[str, ...]:
    """The registered families, in registry order."""
    return tuple(SPECS)


def family_display_name(name: str) -> str:
    """The name tables print for family ``name`` (``name`` itself when not registered)."""
    spec = SPECS.get(name)
    return (spec.display_name or spec.name) if spec is not None else name


def family_spec(name: str) -> FamilySpec:
    """The spec of ``name``; ``ValueError`` naming the registered families if it is unknown."""
    spec = SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        valid = ", ".join(f"'{n}'" for n in SPECS)
        raise ValueError(
            f"unknown model.family {name!r}; use one of the registered families: {valid}"
        )
    return spec


def upgrade_config_tree(tree: Any) -> Any:
    """``tree`` (a raw config mapping) after the ``config_upgrades`` of every registered
    family, in registry order; anything but a mapping is returned as it is (validation
    refuses it)."""
    if not isinstance(tree, dict):
        return tree
    for spec in SPECS.values():
        for upgrade in spec.config_upgrades:
            tree = upgrade(tree)
    return tree


def _effect_head_needs_image_output(cfg: Any) -> None:
    # The effect head adds a density shift to the network's output: an image only when
    # the denoiser predicts the clean sample.
    if cfg.model.effect_knots and cfg.diffusion.prediction != "sample":
        raise ValueError(
            "model.effect_knots adds a density shift to the network's output, which is an "
            "image only with diffusion.prediction sample; set it, or model.effect_knots: 0"
        )


def _section_value(section: Any, key: str, default: Any = None) -> Any:
    """``section[key]`` of a raw section (a dict) or its attribute (a section object)."""
    if isinstance(section, dict):
        return section.get(key, default)
    return getattr(section, key, default)


def _rflow_config_upgrade(tree: dict[str, Any]) -> dict[str, Any]:
    """Fill ``diffusion.process`` / ``diffusion.sampler`` of a ``model.family: rflow`` config
    (``rflow`` both) when it leaves them out, and read ``model.family: diffusion`` with
    ``diffusion.process: rflow`` (rectified flow before it was a family) as ``rflow``."""
    model, diff = tree.get("model"), tree.get("diffusion")
    if model is not None and not isinstance(model, dict) and not hasattr(model, "family"):
        return tree  # not a section: validation refuses it
    family = DEFAULT_FAMILY if model is None else _section_value(model, "family", DEFAULT_FAMILY)
    if family == "rflow":
        if diff is None or isinstance(diff, dict):
            filled = {"process": "rflow", **(diff or {})}
            if filled["process"] == "rflow":  # another process is refused by the checks
                filled = {"sampler": "rflow", **filled}
            if filled != diff:
                tree = {**tree, "diffusion": filled}
        return tree
    if family == DEFAULT_FAMILY and _section_value(diff, "process") == "rflow":
        if model is None or isinstance(model, dict):
            new_model: Any = {**(model or {}), "family": "rflow"}
        else:
            new_model = model.model_copy(update={"family": "rflow"})
        tree = {**tree, "model": new_model}
    return tree


def _diffusion_process_is_ddpm(cfg: Any) -> None:
    if cfg.diffusion.process != "ddpm":
        raise ValueError(
            f"diffusion.process '{cfg.diffusion.process}' is not a process of model.family "
            "diffusion; use model.family rflow for rectified flow"
        )


def _rflow_process_is_rflow(cfg: Any) -> None:
    if cfg.diffusion.process != "rflow":
        raise ValueError(
            f"model.family rflow trains rectified flow, not diffusion.process "
            f"'{cfg.diffusion.process}'; leave diffusion.process out (or set it to rflow), "
            "or use model.family diffusion for DDPM"
        )


_GENERATIVE = "unveil.generative.registry"
for _spec in (
    FamilySpec(
        "gan",
        "pix2pix-style conditional GAN: one generator pass, a PatchGAN discriminator",
        display_name="GAN",
        behaviour=f"{_GENERATIVE}:GanFamily",
        needs_discriminator=True,
        time_conditioned=False,
        output_activation_default="tanh",
        allows_noise_input=True,
    ),
    FamilySpec(
        "diffusion",
        "denoising diffusion (DDPM, sampled with DDIM or DDPM), classifier-free guidance",
        behaviour=f"{_GENERATIVE}:DiffusionFamily",
        time_conditioned=True,
        output_activation_default="linear",
        supports_inversion=True,
        iterative=True,
        config_checks=(_effect_head_needs_image_output, _diffusion_process_is_ddpm),
    ),
    FamilySpec(
        "rflow",
        "rectified flow (a learned velocity, Euler steps), classifier-free guidance",
        display_name="rectified flow",
        behaviour="unveil.generative.rflow:RFlowFamily",
        time_conditioned=True,
        output_activation_default="linear",
        supports_inversion=True,
        iterative=True,
        # The effect-head check is the one rectified flow had as a diffusion process: a
        # config that loaded then still loads.
        config_checks=(_effect_head_needs_image_output, _rflow_process_is_rflow),
        config_upgrades=(_rflow_config_upgrade,),
    ),
):
    register_family_spec(_spec)
del _spec
