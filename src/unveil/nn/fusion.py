"""Text-visual fusion units shared by the GAN generator and the diffusion UNet.

Every unit maps a feature map ``h`` of shape ``(B, C, D, H, W)`` and a
:class:`~unveil.conditioning.TextCondition` (tokens ``(B, L, E)``, mask ``(B, L)``, pooled
``(B, E)``, null ``(B,)``) to a feature map of the same shape, with a residual path.  ``E``
is the model's ``cond_dim``.

Missing text is never a special case for the caller: where ``cond`` is ``None``, where
``cond.null[b]`` is True (classifier-free guidance drop) or where ``cond.mask[b]`` is all
False, a unit uses its *learned* null condition (a null pooled vector for the affine and
concat units, a null token for cross-attention).  The null token is always present as an
extra key, so attention is defined even with no real token.

Initialisation is owned by each unit (``reset_parameters``): the affine and
cross-attention units are *exactly* the identity at initialisation (zero-initialised last
convolution / output projection), as in DF-GAN and guided-diffusion.  The published code
applied a global weight init after construction and so destroyed that identity; here the
networks call each unit's ``reset_parameters`` from their own ``init_weights``, so even a
global ``module.apply(init)`` followed by ``init_weights()`` restores the contract.

Which kinds exist, their display names and how the UNet wires each of them is the fusion
registry (:mod:`unveil.fusion_registry`, re-exported here): the ``unit`` kinds are the
classes below, built by :func:`make_fusion`; ``adagn`` is a ``norm`` kind, a text
scale-shift inside the UNet's residual blocks (:class:`AdaGNEmbedding`, :class:`AdaGNShift`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unveil.conditioning import TextCondition
from unveil.fusion_registry import (
    DISPLAY_NAMES,
    FUSIONS,
    FusionSpec,
    display_name,
    fusion_names,
    fusion_spec,
    register_fusion,
)

__all__ = [
    "DISPLAY_NAMES",
    "FUSIONS",
    "AdaGNEmbedding",
    "AdaGNShift",
    "AffineCrossAttentionFusion",
    "AffineFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "FusionSpec",
    "NoFusion",
    "display_name",
    "fusion_names",
    "fusion_spec",
    "group_count",
    "make_fusion",
    "pooled_or_null",
    "register_fusion",
    "text_present",
]


def group_count(channels: int, preferred: int = 32) -> int:
    """The largest group count ``<= preferred`` that divides ``channels`` (for GroupNorm)."""
    for g in range(min(preferred, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def text_present(cond: TextCondition | None, batch: int, device: torch.device) -> torch.Tensor:
    """``(B,)`` bool: True where sample ``b`` has usable text.

    False where ``cond`` is None, ``cond.null[b]`` is True, or ``cond.mask[b]`` has no real
    token; those samples take the learned null condition.
    """
    if cond is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if cond.batch_size != batch:
        raise ValueError(
            f"the text condition holds {cond.batch_size} samples but the feature map holds "
            f"{batch}; pass one TextCondition row per image."
        )
    present = cond.mask.to(device=device, dtype=torch.bool).any(dim=1)
    if cond.null is not None:
        present = present & ~cond.null.to(device=device, dtype=torch.bool)
    return present


def pooled_or_null(
    cond: TextCondition | None, null_vector: torch.Tensor, batch: int, like: torch.Tensor
) -> torch.Tensor:
    """The pooled text ``(B, E)`` with the learned ``null_vector`` ``(E,)`` where text is missing."""
    null = null_vector.to(like.dtype).expand(batch, -1)
    if cond is None:
        return null
    present = text_present(cond, batch, like.device)
    pooled = cond.pooled.to(device=like.device, dtype=like.dtype)
    if pooled.shape[-1] != null_vector.shape[0]:
        raise ValueError(
            f"the pooled text has width {pooled.shape[-1]} but the network expects cond_dim="
            f"{null_vector.shape[0]}; build the network with the text adapter's width."
        )
    return torch.where(present[:, None], pooled, null)


class NoFusion(nn.Module):
    """The mask-only baseline: returns the feature map unchanged and ignores the text.

    Takes (and ignores) the sizes every unit takes, so :func:`make_fusion` builds it alike.
    """

    def __init__(self, channels: int = 0, cond_dim: int = 0) -> None:
        super().__init__()

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)`` -> ``(B, C, D, H, W)`` (the same tensor)."""
        return h

    def reset_parameters(self) -> None:
        """Nothing to initialise."""


class ConcatFusion(nn.Module):
    """Naive baseline: the pooled text tiled as extra channels, a 1x1x1 conv, a residual.

    ``out = h + Conv1x1([h ; tile(pooled)])``.  The convolution over the concatenation is
    computed as ``W_h h + W_t pooled`` (broadcast over voxels), which is the same linear map
    without materialising ``E`` tiled channels at every voxel (at full resolution that would
    be ``E x D x H x W`` floats per sample for nothing).
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.cond_dim = cond_dim
        self.conv_h = nn.Conv3d(channels, channels, kernel_size=1, bias=True)
        self.proj_text = nn.Linear(cond_dim, channels, bias=False)
        self.null_pooled = nn.Parameter(torch.zeros(cond_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init for a 1x1x1 conv over ``C + E`` input channels."""
        conv = nn.Conv3d(self.channels + self.cond_dim, self.channels, 1)
        with torch.no_grad():
            w = conv.weight.to(self.conv_h.weight.device)
            self.conv_h.weight.copy_(w[:, : self.channels])
            self.proj_text.weight.copy_(w[:, self.channels :, 0, 0, 0])
            self.conv_h.bias.copy_(conv.bias.to(self.conv_h.bias.device))
            nn.init.normal_(self.null_pooled, std=0.02)

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)``, pooled text ``(B, E)`` -> ``(B, C, D, H, W)``."""
        pooled = pooled_or_null(cond, self.null_pooled, h.shape[0], h)
        text = rearrange(self.proj_text(pooled), "b c -> b c 1 1 1")
        return h + self.conv_h(h) + text


class _TextMLP(nn.Module):
    """Linear -> ReLU -> Linear, from the pooled text ``(B, E)`` to ``(B, C)`` (DF-GAN's affine MLP)."""

    def __init__(self, cond_dim: int, channels: int, bias_init: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cond_dim, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.bias_init = bias_init

    def reset_parameters(self) -> None:
        # Last layer zero weight + constant bias: gamma starts at exactly 1, beta at 0
        # (DF-GAN's own initialisation), whatever the text.
        self.fc1.reset_parameters()
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, self.bias_init)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(pooled)))


class AffineFusion(nn.Module):
    """DF-GAN-style deep text-image fusion block, exactly the identity at initialisation.

    ``a_i(x) = gamma_i(t) * x + beta_i(t)`` with ``gamma_i, beta_i`` MLPs of the pooled text
    ``t``; the block is ``h + conv2(lrelu(a_2(conv1(lrelu(a_1(h))))))``, 3x3x3 convs,
    LeakyReLU(0.2).  At init gamma = 1, beta = 0 and ``conv2`` is zero, so the output equals
    ``h`` bit for bit; :meth:`reset_parameters` restores that state.
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.cond_dim = cond_dim
        self.gamma1 = _TextMLP(cond_dim, channels, 1.0)
        self.beta1 = _TextMLP(cond_dim, channels, 0.0)
        self.gamma2 = _TextMLP(cond_dim, channels, 1.0)
        self.beta2 = _TextMLP(cond_dim, channels, 0.0)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.null_pooled = nn.Parameter(torch.zeros(cond_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity init: gamma = 1, beta = 0, zero last conv; a small random null vector."""
        for mlp in (self.gamma1, self.beta1, self.gamma2, self.beta2):
            mlp.reset_parameters()
        self.conv1.reset_parameters()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        nn.init.normal_(self.null_pooled, std=0.02)

    @staticmethod
    def _affine(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return x * rearrange(gamma, "b c -> b c 1 1 1") + rearrange(beta, "b c -> b c 1 1 1")

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)``, pooled text ``(B, E)`` -> ``(B, C, D, H, W)``."""
        t = pooled_or_null(cond, self.null_pooled, h.shape[0], h)
        y = F.leaky_relu(self._affine(h, self.gamma1(t), self.beta1(t)), 0.2)
        y = self.conv1(y)
        y = F.leaky_relu(self._affine(y, self.gamma2(t), self.beta2(t)), 0.2)
        return h + self.conv2(y)


class CrossAttentionFusion(nn.Module):
    """Multi-head cross-attention from voxels (queries) to text tokens (keys, values).

    ``out = h + proj(attn(q = W_q GN(h), k = W_k LN([tokens; null]), v = W_v LN([tokens; null])))``

    The learned null token is always appended as one more key, so every voxel attends to at
    least one key; where a sample has no usable text every real token is masked out and the
    output is the same as for ``cond=None``.  The output projection is zero-initialised, so
    the unit is the identity at initialisation (guided-diffusion / imagen practice).

    Each voxel attends over the ``L + 1`` tokens independently (cost ``O(D H W L C)``),
    unlike the published unit that took a softmax over all voxels against one vector.  The
    cost is small at the bottleneck; at full-resolution decoder levels the ``(B, heads, DHW,
    L + 1)`` attention matrix is the dominant memory cost of the network.
    """

    def __init__(self, channels: int, cond_dim: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(
                f"cross-attention needs channels ({channels}) divisible by heads ({heads}); "
                "change the channel widths or the number of heads."
            )
        self.channels = channels
        self.cond_dim = cond_dim
        self.heads = heads
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.text_norm = nn.LayerNorm(cond_dim)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(cond_dim, channels, bias=False)
        self.to_v = nn.Linear(cond_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.null_token = nn.Parameter(torch.zeros(cond_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init for q/k/v, zero output projection (identity), small random null token."""
        self.norm.reset_parameters()
        self.text_norm.reset_parameters()
        for lin in (self.to_q, self.to_k, self.to_v):
            lin.reset_parameters()
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        # Not zero: a zero token would be a fixed point of LayerNorm with no signal at all.
        nn.init.normal_(self.null_token, std=1.0)

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)``, tokens ``(B, L, E)`` with mask ``(B, L)`` -> ``(B, C, D, H, W)``."""
        b, _, d, hh, w = h.shape
        null = self.null_token.to(h.dtype).expand(b, 1, -1)
        if cond is None:
            context = null
            keep = torch.ones(b, 1, dtype=torch.bool, device=h.device)
        else:
            tokens = cond.tokens.to(device=h.device, dtype=h.dtype)
            if tokens.shape[-1] != self.cond_dim:
                raise ValueError(
                    f"the text tokens have width {tokens.shape[-1]} but the network expects "
                    f"cond_dim={self.cond_dim}; build the network with the text adapter's width."
                )
            present = text_present(cond, b, h.device)
            real = cond.mask.to(device=h.device, dtype=torch.bool) & present[:, None]
            context = torch.cat([tokens, null], dim=1)
            keep = torch.cat([real, torch.ones(b, 1, dtype=torch.bool, device=h.device)], dim=1)
        context = self.text_norm(context)
        x = rearrange(self.norm(h), "b c d h w -> b (d h w) c")
        q = rearrange(self.to_q(x), "b n (m c) -> b m n c", m=self.heads)
        k = rearrange(self.to_k(context), "b l (m c) -> b m l c", m=self.heads)
        v = rearrange(self.to_v(context), "b l (m c) -> b m l c", m=self.heads)
        attn_mask = rearrange(keep, "b l -> b 1 1 l")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out(rearrange(out, "b m n c -> b n (m c)"))
        return h + rearrange(out, "b (d h w) c -> b c d h w", d=d, h=hh, w=w)


class AffineCrossAttentionFusion(nn.Module):
    """Both routes, as text-to-image models do: pooled text by affine, tokens by cross-attention.

    ``out = cross_attention(affine(h, pooled), tokens)``; the identity at initialisation.
    """

    def __init__(self, channels: int, cond_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.affine = AffineFusion(channels, cond_dim)
        self.attention = CrossAttentionFusion(channels, cond_dim, heads)

    def reset_parameters(self) -> None:
        """Reset both parts to their identity initialisation."""
        self.affine.reset_parameters()
        self.attention.reset_parameters()

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        """``h`` ``(B, C, D, H, W)`` -> ``(B, C, D, H, W)``."""
        return self.attention(self.affine(h, cond), cond)


class AdaGNEmbedding(nn.Sequential):
    """AdaGN's text embedding: pooled text ``(B, E)`` -> Linear -> SiLU -> Linear -> ``(B, T)``.

    The ``adagn`` fusion (a ``norm`` placement in the registry) scales and shifts the
    normalised features of every residual block at the fused levels from this embedding,
    as the class embedding does in guided diffusion (Dhariwal & Nichol 2021, "AdaGN").  The
    network feeds it the pooled text with its learned null vector (``text_null``, small and
    random, not zero, so the text-free rows do not all collapse onto one degenerate
    embedding) where text is missing.  On the demo's 600-step runs it picked the text up
    more slowly than concat (docs/demo.md).

    A plain ``nn.Sequential`` so the parameter names (``text_mlp.0.*``, ``text_mlp.2.*``)
    are those of the checkpoints written when AdaGN lived in the UNet.
    """

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


class AdaGNShift(nn.Linear):
    """AdaGN's per-block scale-shift: ``h * (1 + scale) + shift``, ``(scale, shift) = W SiLU(emb) + b``.

    ``h`` ``(B, C, D, H, W)`` (the block's normalised features), ``emb`` ``(B, T)`` from
    :class:`AdaGNEmbedding` -> ``(B, C, D, H, W)``.  A ``Linear(T, 2 C)`` subclass so its
    parameters keep the names (``text_proj.weight``, ``text_proj.bias``) and the default
    initialisation of the checkpoints written when AdaGN lived in the UNet.
    """

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__(dim, 2 * channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``h`` ``(B, C, D, H, W)``, ``emb`` ``(B, T)`` -> ``(B, C, D, H, W)``."""
        proj = F.linear(F.silu(emb), self.weight, self.bias)
        scale, shift = rearrange(proj, "b c -> b c 1 1 1").chunk(2, 1)
        return h * (1 + scale) + shift


def make_fusion(kind: str, channels: int, cond_dim: int, heads: int = 4) -> nn.Module:
    """Build the fusion unit ``kind`` (a ``unit`` or ``none`` kind of the registry) for ``channels``.

    Raises ``ValueError`` for an unknown kind (naming the registered ones), for a kind that
    is not a separate unit (``adagn``: build it with the UNet), or, for attention kinds,
    channels not divisible by ``heads``.
    """
    spec = fusion_spec(kind)
    if spec.placement not in ("unit", "none"):
        raise ValueError(
            f"fusion '{kind}' is not a separate unit ({spec.description}); build it with "
            f"ConditionalUNet(fusion='{kind}')."
        )
    if channels < 1 or cond_dim < 1:
        raise ValueError(
            f"fusion needs positive channels and cond_dim (got {channels} and {cond_dim})."
        )
    if spec.needs_heads:
        if heads < 1 or channels % heads:
            raise ValueError(
                f"fusion '{kind}' needs channels ({channels}) divisible by heads ({heads}); "
                "change the channel widths or the number of heads."
            )
        return spec.build(channels, cond_dim, heads)
    return spec.build(channels, cond_dim)
