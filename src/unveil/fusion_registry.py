"""The fusion registry: the one list of the ways the clinical text can enter the UNet.

A *fusion kind* (the config's ``model.fusion``) is a :class:`FusionSpec` in :data:`FUSIONS`.
Everything that needs the list of kinds reads it from here: config validation
(:mod:`unveil.config`), the UNet (:mod:`unveil.nn.unet`, through
:func:`unveil.nn.fusion.make_fusion` and the spec's placement), the display names of the
evaluation tables (:mod:`unveil.metrics.evaluate`).  Registering a kind with
:func:`register_fusion` is all it takes for the config to accept it and the UNet to build it.

This module is torch-free on purpose: the config is imported by light commands
(``unveil --help``, ``unveil inspect``) that must not pay for importing torch.  A spec
therefore names its modules as ``"package.module:attribute"`` strings, imported on first
build; a callable (a class, a function) is accepted too, as a kind registered at run time
(a test, a plug-in) would pass it.

Placements, i.e. how :class:`~unveil.nn.unet.ConditionalUNet` wires a kind:

``none``
    No text path: the network sees the mask alone and builds no fusion module (the
    mask-only baseline).  ``factory`` may still name a pass-through unit for
    :func:`~unveil.nn.fusion.make_fusion`.
``unit``
    A separate unit after the residual blocks of every fused level (``fusion_levels``):
    ``factory(channels, cond_dim)`` -- or ``factory(channels, cond_dim, heads)`` when
    ``needs_heads`` -- returns a module ``forward(h, cond) -> h`` on ``(B, C, D, H, W)``
    feature maps (:mod:`unveil.nn.fusion` documents the contract: residual, learned null
    condition, own ``reset_parameters``).
``norm``
    Inside the residual blocks of the fused levels, on the normalised features:
    ``factory(cond_dim, dim)`` returns the network-level embedding ``(B, E) -> (B, dim)`` of
    the pooled text (the network's learned null vector where text is missing), and
    ``block_factory(dim, channels)`` the per-block module ``forward(h, emb) -> h`` applied
    right after the block's second GroupNorm (and its time scale-shift).  The network
    registers them as ``text_mlp`` (embedding), ``text_null`` (null vector) and
    ``<block>.text_proj``: the names of the checkpoints written before this registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Placement = Literal["none", "unit", "norm"]
PLACEMENTS: tuple[str, ...] = ("none", "unit", "norm")

Factory = str | Callable[..., Any]


@dataclass(frozen=True)
class FusionSpec:
    """One fusion kind.

    Attributes:
        name: the config value (``model.fusion``), stored in checkpoints and results.
        display: the name in tables, figures and docs (``"mask-only"``, ``"AdaGN"``).
        description: one line on what the kind does.
        placement: ``none``, ``unit`` or ``norm`` (see the module text).
        factory: the unit (``unit``) or the text embedding (``norm``), as a callable or a
            ``"module:attribute"`` string imported on first use.
        block_factory: ``norm`` only: the per-residual-block module.
        needs_heads: the kind attends with ``heads`` heads: the factory takes ``heads`` and
            every fused width must be divisible by it.
    """

    name: str
    display: str
    description: str
    placement: Placement
    factory: Factory | None = None
    block_factory: Factory | None = None
    needs_heads: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a fusion needs a non-empty name, not {self.name!r}.")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"fusion '{self.name}': placement must be one of {', '.join(PLACEMENTS)}, "
                f"not {self.placement!r}."
            )
        if self.placement != "none" and self.factory is None:
            raise ValueError(f"fusion '{self.name}' ({self.placement}) needs a factory.")
        if (self.placement == "norm") != (self.block_factory is not None):
            raise ValueError(
                f"fusion '{self.name}': a block_factory goes with placement 'norm' and only there."
            )

    @property
    def uses_text(self) -> bool:
        """False for the mask-only placement: the network has no text path at all."""
        return self.placement != "none"

    def build(self, *args: Any) -> Any:
        """Call the factory (imported on first use) with ``args``."""
        if self.factory is None:
            raise ValueError(f"fusion '{self.name}' has no module to build.")
        return _resolve(self.factory)(*args)

    def build_block(self, *args: Any) -> Any:
        """Call the block factory (``norm`` placement) with ``args``."""
        if self.block_factory is None:
            raise ValueError(f"fusion '{self.name}' has no per-block module.")
        return _resolve(self.block_factory)(*args)


def _resolve(ref: Factory) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


#: The registry, name -> spec, in the order of the published ablation (tables follow it).
FUSIONS: dict[str, FusionSpec] = {}


def register_fusion(spec: FusionSpec, *, replace: bool = False) -> FusionSpec:
    """Add ``spec`` to :data:`FUSIONS` (raise ``ValueError`` if its name is taken and not ``replace``)."""
    if not isinstance(spec, FusionSpec):
        raise TypeError(f"register_fusion takes a FusionSpec, not {type(spec).__name__}.")
    if spec.name in FUSIONS and not replace:
        raise ValueError(
            f"fusion '{spec.name}' is already registered; pass replace=True to redefine it."
        )
    FUSIONS[spec.name] = spec
    return spec


def fusion_names() -> tuple[str, ...]:
    """The registered fusion kinds, in registry order."""
    return tuple(FUSIONS)


def fusion_spec(name: str) -> FusionSpec:
    """The spec of ``name``; ``ValueError`` naming the valid kinds if it is not registered."""
    spec = FUSIONS.get(name) if isinstance(name, str) else None
    if spec is None:
        valid = ", ".join(f"'{n}'" for n in FUSIONS)
        raise ValueError(f"unknown fusion kind {name!r}; use one of: {valid}")
    return spec


def display_name(name: str) -> str:
    """The display name of ``name``, or ``name`` itself when it is not registered."""
    spec = FUSIONS.get(name)
    return spec.display if spec is not None else name


class _DisplayNames(Mapping[str, str]):
    """Live read-only view name -> display name of :data:`FUSIONS`."""

    def __getitem__(self, name: str) -> str:
        return FUSIONS[name].display

    def __iter__(self) -> Iterator[str]:
        return iter(FUSIONS)

    def __len__(self) -> int:
        return len(FUSIONS)

    def __repr__(self) -> str:
        return f"DISPLAY_NAMES({dict(self)!r})"


#: name -> display name, always in step with :data:`FUSIONS` (kinds registered later included).
DISPLAY_NAMES: Mapping[str, str] = _DisplayNames()


_FUSION = "unveil.nn.fusion"
for _spec in (
    FusionSpec(
        "none",
        "mask-only",
        "no text path: the network sees the mask alone (the reference of the ablation)",
        "none",
        factory=f"{_FUSION}:NoFusion",
    ),
    FusionSpec(
        "concat",
        "concat",
        "the pooled text tiled as extra channels, a 1x1x1 convolution and a residual",
        "unit",
        factory=f"{_FUSION}:ConcatFusion",
    ),
    FusionSpec(
        "affine",
        "affine",
        "DF-GAN block: per-channel scale and shift from MLPs of the pooled text, two 3x3x3 convs",
        "unit",
        factory=f"{_FUSION}:AffineFusion",
    ),
    FusionSpec(
        "cross_attention",
        "cross-attention",
        "multi-head cross-attention from every voxel to the text tokens and a learned null token",
        "unit",
        factory=f"{_FUSION}:CrossAttentionFusion",
        needs_heads=True,
    ),
    FusionSpec(
        "affine+cross_attention",
        "affine+cross-attention",
        "the affine block on the pooled text, then cross-attention to the tokens",
        "unit",
        factory=f"{_FUSION}:AffineCrossAttentionFusion",
        needs_heads=True,
    ),
    FusionSpec(
        "adagn",
        "AdaGN",
        "a text embedding scales and shifts the normalised features of every residual block",
        "norm",
        factory=f"{_FUSION}:AdaGNEmbedding",
        block_factory=f"{_FUSION}:AdaGNShift",
    ),
):
    register_fusion(_spec)
del _spec
