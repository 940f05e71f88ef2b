"""The conditional 3D UNet shared by the GAN generator and the diffusion denoiser.

One backbone, two families:

* diffusion (``with_time=True``): input ``[x_t ; mask]``, a sinusoidal timestep embedding
  (MONAI's ``get_timestep_embedding``) through an MLP, applied as a scale-shift in every
  residual block (guided-diffusion); linear output.
* GAN generator (``with_time=False``): input ``[noise ; mask]`` (or the mask alone when
  ``noise_channels == 0``), no time embedding; ``tanh`` output since images live in
  ``[-1, 1]``.

The mask arrives one-hot ``(B, M, D, H, W)`` and is concatenated to the input.  The text
enters through the fusion kind named by ``fusion``, looked up in the fusion registry
(:mod:`unveil.fusion_registry`), at the levels named in ``fusion_levels``:
``"bottleneck"`` (default, cheap), ``"decoder"`` and/or ``"encoder"`` (every level at that
side, up to full resolution, where cross-attention over ``D x H x W`` voxels becomes the
dominant cost).  The spec's placement says how: ``unit`` kinds add a fusion unit after the
residual blocks of each fused level (:func:`unveil.nn.fusion.make_fusion`), ``norm`` kinds
(``adagn``) a text scale-shift inside those residual blocks, ``none`` no text path.

Layout for ``channels = (c0, c1, c2)``: level ``i`` holds ``res_blocks`` residual blocks
at width ``c_i`` and resolution ``1 / 2**i``; the deepest level is the bottleneck
(``res block -> fusion -> res block``); downsampling is a strided 3x3x3 convolution and
upsampling a 2x2x2 transposed convolution (no overlap, hence no checkerboard from uneven
kernel coverage, and 27x cheaper at full resolution than upsample + 3x3x3 conv), with
concatenated skip connections.

Weight initialisation: PyTorch's per-layer defaults plus the units' own identity inits;
the network never needs a global ``apply(init)``.  If training code applies one anyway,
:meth:`ConditionalUNet.init_weights` restores every zero/identity init afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from unveil.conditioning import TextCondition
from unveil.nn.fusion import FusionSpec, fusion_spec, make_fusion, pooled_or_null

FUSION_LEVELS: tuple[str, ...] = ("bottleneck", "decoder", "encoder")

# Builders a level is given: the ``unit`` fusion at (where, width), and the ``norm``
# fusion's block modulation at where (a function of the block width), either None.
_FuseFactory = Callable[[str, int], "nn.Module | None"]
_TextBlockFactory = Callable[[str], "Callable[[int], nn.Module] | None"]


class ResBlock(nn.Module):
    """GroupNorm + SiLU residual block with an optional time scale-shift and text modulation.

    ``h = conv1(SiLU(GN1(x)))``; ``h = GN2(h) * (1 + scale) + shift`` with
    ``(scale, shift) = Linear(SiLU(temb))`` when ``time_dim`` is given; then ``h =
    text_proj(h, text_emb)`` when ``text_block`` is given (a ``norm`` fusion of the registry,
    e.g. :class:`~unveil.nn.fusion.AdaGNShift`: ``text_block(out_channels)`` builds it);
    ``h = conv2(SiLU(h))`` with ``conv2`` zero-initialised, so the block starts as its skip
    path.  Hand-written because MONAI's ``DiffusionUNetResnetBlock`` adds the time embedding
    instead of the scale-shift asked for here.  ``(B, Cin, D, H, W) -> (B, Cout, D, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_groups: int,
        time_dim: int | None = None,
        text_block: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels) if time_dim else None
        self.text_proj = text_block(out_channels) if text_block is not None else None
        self.skip = (
            nn.Conv3d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the last conv (block = skip path at init); defaults elsewhere."""
        for m in (self.norm1, self.conv1, self.norm2, self.time_proj, self.text_proj, self.skip):
            if m is not None and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None = None,
        text_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, Cin, D, H, W)``, ``temb`` / ``text_emb`` ``(B, T)`` or None -> ``(B, Cout, D, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this block was built with a time embedding; pass it.")
            scale, shift = rearrange(self.time_proj(F.silu(temb)), "b c -> b c 1 1 1").chunk(2, 1)
            h = h * (1 + scale) + shift
        if self.text_proj is not None:
            if text_emb is None:
                raise ValueError("this block was built with a text embedding; pass it.")
            h = self.text_proj(h, text_emb)
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class _Level(nn.Module):
    """``res_blocks`` residual blocks at one resolution, then an optional fusion unit."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        res_blocks: int,
        norm_groups: int,
        time_dim: int | None,
        fusion: nn.Module | None,
        text_block: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(
                in_channels if i == 0 else out_channels,
                out_channels,
                norm_groups,
                time_dim,
                text_block,
            )
            for i in range(res_blocks)
        )
        self.fusion = fusion

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None,
        cond: TextCondition | None,
        text_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, temb, text_emb)
        if self.fusion is not None:
            x = self.fusion(x, cond)
        return x


class ConditionalUNet(nn.Module):
    """Conditional 3D UNet: mask one-hot at the input, text through fusion units.

    Args:
        image_channels: channels of the image (diffusion: the noisy image ``x_t`` in and
            the prediction out; GAN: the generated image).
        mask_channels: channels of the one-hot mask concatenated at the input.
        out_channels: output channels (the image, or e.g. ``2 x`` for a learned variance).
        channels: width per level; ``len(channels) - 1`` downsamplings.
        res_blocks: residual blocks per level.
        norm_groups: GroupNorm groups; must divide every width.
        fusion: a kind of the fusion registry (:data:`unveil.fusion_registry.FUSIONS`,
            e.g. ``affine``; ``none`` for mask-only); a ``norm`` kind such as ``adagn`` is
            not a separate unit but a text scale-shift inside every residual block of the
            fused levels.
        fusion_levels: where the fusion units sit: any of ``bottleneck, decoder, encoder``.
        heads: attention heads (cross-attention kinds); must divide every fused width.
        cond_dim: width ``E`` of the text tokens and pooled vector.
        with_time: diffusion denoiser (True, time embedding, linear output) or GAN
            generator (False, no time, ``tanh`` output).
        noise_channels: GAN only: channels of the noise passed as ``x``; 0 means ``x`` is
            None and the generator sees the mask alone.
        out_activation: ``"tanh"`` or ``"linear"``; default ``linear`` for diffusion and
            ``tanh`` for the GAN.

    ``forward(x, mask, t, cond)``: ``x`` ``(B, image_channels | noise_channels, D, H, W)``
    or None, ``mask`` ``(B, mask_channels, D, H, W)``, ``t`` ``(B,)`` or None, ``cond`` a
    :class:`TextCondition` or None -> ``(B, out_channels, D, H, W)``; ``D, H, W`` must be
    multiples of :attr:`downsample_factor`.
    """

    def __init__(
        self,
        image_channels: int,
        mask_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        res_blocks: int = 1,
        norm_groups: int = 8,
        fusion: str = "affine",
        fusion_levels: Sequence[str] = ("bottleneck",),
        heads: int = 4,
        cond_dim: int = 128,
        with_time: bool = True,
        noise_channels: int = 0,
        out_activation: str | None = None,
        effect_knots: int = 0,
        height_channel: int | None = None,
        depth_channel: int | None = None,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        fusion_levels = tuple(fusion_levels)
        _validate(
            image_channels,
            mask_channels,
            out_channels,
            channels,
            res_blocks,
            norm_groups,
            fusion,
            fusion_levels,
            heads,
            cond_dim,
            with_time,
            noise_channels,
        )
        if out_activation is None:
            out_activation = "linear" if with_time else "tanh"
        if out_activation not in ("tanh", "linear"):
            raise ValueError(f"out_activation must be 'tanh' or 'linear', not '{out_activation}'.")

        self.image_channels = image_channels
        self.mask_channels = mask_channels
        self.out_channels = out_channels
        self.channels = channels
        spec = fusion_spec(fusion)
        self.fusion_kind = fusion
        self.fusion_levels = fusion_levels if spec.uses_text else ()
        self.cond_dim = cond_dim
        self.with_time = with_time
        self.noise_channels = noise_channels
        self.x_channels = image_channels if with_time else noise_channels
        self.out_activation = out_activation
        self.downsample_factor = 2 ** (len(channels) - 1)

        # Submodules are built (and so drawn from the global RNG) and registered in the
        # order of the checkpoints written before this constructor was split.
        self._build_time_and_text(spec, channels[0], cond_dim, with_time)
        fuse, text_block = self._level_factories(spec, cond_dim, heads)
        c0 = channels[0]
        self.in_conv = nn.Conv3d(self.x_channels + mask_channels, c0, kernel_size=3, padding=1)
        self._build_encoder(channels, res_blocks, norm_groups, fuse, text_block)
        cb = channels[-1]
        self.mid_in = ResBlock(cb, cb, norm_groups, self.time_dim, text_block("bottleneck"))
        self.mid_fusion = fuse("bottleneck", cb)
        self.mid_out = ResBlock(cb, cb, norm_groups, self.time_dim, text_block("bottleneck"))
        self._build_decoder(channels, res_blocks, norm_groups, fuse, text_block)

        self.out_norm = nn.GroupNorm(norm_groups, c0)
        self.out_conv = nn.Conv3d(c0, out_channels, kernel_size=3, padding=1)

        self.effect_head = (
            RegionalEffectHead(
                cond_dim, mask_channels, height_channel, effect_knots, out_channels, depth_channel
            )
            if effect_knots
            else None
        )

    # ------------------------------------------------------------------ build

    def _build_time_and_text(
        self, spec: FusionSpec, c0: int, cond_dim: int, with_time: bool
    ) -> None:
        """Build the time MLP (diffusion) and the pooled-text embedding of a ``norm`` fusion."""
        norm = spec.placement == "norm"
        self.time_dim = 4 * c0 if with_time else None
        self.time_mlp = (
            nn.Sequential(nn.Linear(c0, 4 * c0), nn.SiLU(), nn.Linear(4 * c0, 4 * c0))
            if with_time
            else None
        )
        # A ``norm`` fusion (adagn, :class:`~unveil.nn.fusion.AdaGNEmbedding`): the pooled
        # text (or the learned null vector) through the spec's embedding to ``(B, 4 c0)``,
        # which the spec's block module modulates every residual block of the fused levels
        # with.  The attribute names (text_mlp, text_null, <block>.text_proj) and the order
        # of construction are those of the checkpoints written before the fusion registry.
        self.text_dim = 4 * c0 if norm else None
        self.text_mlp = spec.build(cond_dim, self.text_dim) if norm else None
        # Small and random, not zero: the text-free rows must not all collapse onto one
        # degenerate embedding (same reason as the fusion units' null vectors).
        self.text_null = nn.Parameter(torch.randn(cond_dim) * 0.02) if norm else None

    def _level_factories(
        self, spec: FusionSpec, cond_dim: int, heads: int
    ) -> tuple[_FuseFactory, _TextBlockFactory]:
        """``(fuse, text_block)``: the ``unit`` fusion and the ``norm`` block builder of a level."""
        unit = spec.placement == "unit"
        norm = spec.placement == "norm"

        def fuse(where: str, width: int) -> nn.Module | None:
            if not unit or where not in self.fusion_levels:
                return None
            return make_fusion(self.fusion_kind, width, cond_dim, heads)

        def text_block(where: str) -> Callable[[int], nn.Module] | None:
            if not norm or where not in self.fusion_levels:
                return None
            return lambda width: spec.build_block(self.text_dim, width)

        return fuse, text_block

    def _build_encoder(
        self,
        channels: tuple[int, ...],
        res_blocks: int,
        norm_groups: int,
        fuse: _FuseFactory,
        text_block: _TextBlockFactory,
    ) -> None:
        """Build the encoder levels, each followed by its strided downsampling convolution."""
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(len(channels) - 1):
            self.encoder.append(
                _Level(
                    channels[i],
                    channels[i],
                    res_blocks,
                    norm_groups,
                    self.time_dim,
                    fuse("encoder", channels[i]),
                    text_block("encoder"),
                )
            )
            self.down.append(nn.Conv3d(channels[i], channels[i + 1], 3, stride=2, padding=1))

    def _build_decoder(
        self,
        channels: tuple[int, ...],
        res_blocks: int,
        norm_groups: int,
        fuse: _FuseFactory,
        text_block: _TextBlockFactory,
    ) -> None:
        """Build the decoder: per level, deepest first, an upsampling then a level on the skip."""
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):
            self.up.append(nn.ConvTranspose3d(channels[i + 1], channels[i], 2, stride=2))
            self.decoder.append(
                _Level(
                    2 * channels[i],
                    channels[i],
                    res_blocks,
                    norm_groups,
                    self.time_dim,
                    fuse("decoder", channels[i]),
                    text_block("decoder"),
                )
            )

    # ------------------------------------------------------------------ init

    def init_weights(self) -> None:
        """Re-initialise every layer to this network's own scheme.

        PyTorch defaults for plain layers, then every unit's ``reset_parameters`` (zero last
        convs in residual blocks, identity fusion units).  Call it after any global
        ``apply(init)``: the identity of the fusion units holds again afterwards.
        """
        # Reversed pre-order visits every child before its parent, so a unit's own
        # reset_parameters (identity / zero init) runs after the defaults of its children
        # and wins.
        for m in reversed(list(self.modules())):
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    # ------------------------------------------------------------------ forward

    def check_spatial(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless every spatial size is a multiple of the downsampling."""
        spatial = tuple(int(s) for s in shape[-3:])
        f = self.downsample_factor
        if any(s % f or s == 0 for s in spatial):
            raise ValueError(
                f"spatial size {spatial} is not divisible by the UNet downsampling factor {f} "
                f"(2**(len(channels)-1)); use a patch size that is a multiple of {f}."
            )

    def forward(
        self,
        x: torch.Tensor | None,
        mask: torch.Tensor,
        t: torch.Tensor | None = None,
        cond: TextCondition | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, Cx, D, H, W)`` or None, ``mask`` ``(B, M, D, H, W)``, ``t`` ``(B,)`` -> ``(B, out, D, H, W)``."""
        if mask.ndim != 5 or mask.shape[1] != self.mask_channels:
            raise ValueError(
                f"mask must be (B, {self.mask_channels}, D, H, W), got {tuple(mask.shape)}; "
                "pass the one-hot mask with the channel count the model was built with."
            )
        self.check_spatial(mask.shape)
        if self.x_channels == 0:
            if x is not None:
                raise ValueError(
                    "this generator was built with noise_channels=0 and takes x=None; build "
                    "it with noise_channels>0 to feed noise."
                )
            h = mask
        else:
            if (
                x is None
                or x.shape[1] != self.x_channels
                or x.shape[2:] != mask.shape[2:]
                or x.shape[0] != mask.shape[0]
            ):
                got = None if x is None else tuple(x.shape)
                raise ValueError(
                    f"x must be (B, {self.x_channels}, D, H, W) on the mask's grid "
                    f"{tuple(mask.shape[2:])}, got {got}."
                )
            h = torch.cat([x, mask.to(x.dtype)], dim=1)

        temb = None
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this diffusion UNet needs timesteps t of shape (B,).")
            t = t.reshape(-1).to(h.device)
            if t.shape[0] == 1 and h.shape[0] > 1:
                t = t.expand(h.shape[0])
            emb = get_timestep_embedding(t, self.channels[0]).to(h.dtype)
            temb = self.time_mlp(emb)
        elif t is not None:
            raise ValueError("this GAN generator has no time embedding; pass t=None.")

        text_emb = None
        if self.text_mlp is not None:
            text_emb = self.text_mlp(pooled_or_null(cond, self.text_null, h.shape[0], h))

        h = self.in_conv(h)
        skips = []
        for level, down in zip(self.encoder, self.down, strict=True):
            h = level(h, temb, cond, text_emb)
            skips.append(h)
            h = down(h)
        h = self.mid_in(h, temb, text_emb)
        if self.mid_fusion is not None:
            h = self.mid_fusion(h, cond)
        h = self.mid_out(h, temb, text_emb)
        for up, level in zip(self.up, self.decoder, strict=True):
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = level(h, temb, cond, text_emb)
        h = self.out_conv(F.silu(self.out_norm(h)))
        if self.effect_head is not None:
            h = h + self.effect_head(mask, cond)
        return torch.tanh(h) if self.out_activation == "tanh" else h


class RegionalEffectHead(nn.Module):
    """A text-driven density shift per mask label, piecewise linear in the lung coordinates.

    ``E(x) = sum_l mask_l(x) * sum_k a_lk(text) * phi_k(height(x))``: ``phi_k`` are ``K``
    hat functions on ``[-1, 1]`` (knots evenly spaced, clamped outside), ``a(text)`` a
    small MLP of the pooled text, zero-initialised so the head starts as identity.  With a
    depth channel the basis is the tensor product of ``K`` hats in height and ``K`` in depth
    (bilinear in both).  The output is added to the network's output, before its
    activation.

    Why: measured on the phantom (figures in docs/recovery.md), the UNet's text path
    spreads a zonal effect over the whole lung and into the airway because it has to draw
    the zone's shape itself.  Here the label gating keeps the shift of one structure out of another exactly,
    and the height basis gives zonal shifts a direct, low-dimensional path from the text;
    everything else (texture, non-zonal patterns) stays with the UNet.

    Shapes: mask ``(B, M, D, H, W)`` whose ``height_channel`` holds the lung height and whose
    other channels are labels; output ``(B, out_channels, D, H, W)``.
    """

    def __init__(
        self,
        cond_dim: int,
        mask_channels: int,
        height_channel: int,
        knots: int,
        out_channels: int,
        depth_channel: int | None = None,
    ) -> None:
        super().__init__()
        if knots < 2 or not 0 <= height_channel < mask_channels:
            raise ValueError(
                f"the effect head needs at least 2 knots and a height channel among the "
                f"{mask_channels} mask channels (got knots={knots}, channel {height_channel})."
            )
        if depth_channel is not None and not (
            0 <= depth_channel < mask_channels and depth_channel != height_channel
        ):
            raise ValueError(f"depth channel {depth_channel} is not a free mask channel.")
        self.height_channel = height_channel
        self.depth_channel = depth_channel
        self.labels = [c for c in range(mask_channels) if c not in (height_channel, depth_channel)]
        self.knots = knots
        self.out_channels = out_channels
        self.n_basis = knots * (knots if depth_channel is not None else 1)
        n = len(self.labels) * self.n_basis * out_channels
        self.effect_null = nn.Parameter(torch.randn(cond_dim) * 0.02)
        self.effect_mlp = nn.Sequential(
            nn.Linear(cond_dim, 2 * cond_dim), nn.SiLU(), nn.Linear(2 * cond_dim, n)
        )
        self.register_buffer("centres", torch.linspace(-1.0, 1.0, knots), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.effect_mlp[-1].weight)
        nn.init.zeros_(self.effect_mlp[-1].bias)

    def forward(self, mask: torch.Tensor, cond: TextCondition | None) -> torch.Tensor:
        b = mask.shape[0]
        pooled = pooled_or_null(cond, self.effect_null, b, mask)
        coef = self.effect_mlp(pooled).view(b, self.out_channels, len(self.labels), self.n_basis)
        basis = self._hats(mask[:, self.height_channel])  # (B, K, D, H, W)
        if self.depth_channel is not None:
            depth = self._hats(mask[:, self.depth_channel])
            basis = rearrange(
                basis.unsqueeze(2) * depth.unsqueeze(1), "b k j x y z -> b (k j) x y z"
            )
        labels = mask[:, self.labels]  # (B, L, D, H, W)
        return torch.einsum("bolk,bkxyz,blxyz->boxyz", coef, basis, labels)

    def _hats(self, coord: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` coordinate in [-1, 1] -> ``(B, K, D, H, W)`` hat functions."""
        width = 2.0 / (self.knots - 1)
        centres = self.centres.to(coord.dtype).view(1, -1, 1, 1, 1)
        return torch.relu(1.0 - (coord.clamp(-1.0, 1.0).unsqueeze(1) - centres).abs() / width)


def _validate(
    image_channels: int,
    mask_channels: int,
    out_channels: int,
    channels: tuple[int, ...],
    res_blocks: int,
    norm_groups: int,
    fusion: str,
    fusion_levels: tuple[str, ...],
    heads: int,
    cond_dim: int,
    with_time: bool,
    noise_channels: int,
) -> None:
    """Check the argument combination; raise ``ValueError`` with one sentence on the fix."""
    if image_channels < 1 or out_channels < 1:
        raise ValueError("image_channels and out_channels must be at least 1.")
    if mask_channels < 0 or noise_channels < 0:
        raise ValueError("mask_channels and noise_channels cannot be negative.")
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ValueError(f"channels {list(channels)} must be one or more positive widths.")
    if res_blocks < 1:
        raise ValueError(f"res_blocks must be at least 1 (got {res_blocks}).")
    if norm_groups < 1 or any(c % norm_groups for c in channels):
        raise ValueError(
            f"every width in channels {list(channels)} must be divisible by norm_groups "
            f"({norm_groups}); change one of them."
        )
    try:
        spec = fusion_spec(fusion)
    except ValueError as err:  # names the registered kinds
        raise ValueError(f"{err}.") from None
    bad = [lv for lv in fusion_levels if lv not in FUSION_LEVELS]
    if bad:
        raise ValueError(f"unknown fusion level(s) {bad}; use any of: {', '.join(FUSION_LEVELS)}.")
    if spec.uses_text and not fusion_levels:
        raise ValueError(
            f"fusion '{fusion}' needs at least one of fusion_levels ({', '.join(FUSION_LEVELS)}); "
            "use fusion 'none' for a mask-only model."
        )
    if spec.uses_text and len(channels) == 1 and set(fusion_levels) <= {"encoder", "decoder"}:
        raise ValueError(
            "a one-level UNet has no encoder or decoder level to fuse at; use fusion_levels "
            "('bottleneck',)."
        )
    if spec.uses_text and cond_dim < 1:
        raise ValueError(f"cond_dim must be positive (got {cond_dim}).")
    if spec.needs_heads:
        fused = {channels[-1]} if "bottleneck" in fusion_levels else set()
        if {"encoder", "decoder"} & set(fusion_levels):
            fused |= set(channels[:-1])
        bad_w = sorted(c for c in fused if heads < 1 or c % heads)
        if bad_w:
            raise ValueError(
                f"fusion '{fusion}' needs every fused width {bad_w} divisible by heads "
                f"({heads}); change channels or heads."
            )
    if with_time and noise_channels:
        raise ValueError(
            "noise_channels is for the GAN generator (with_time=False); the diffusion UNet "
            "takes the noisy image as x, so set noise_channels=0."
        )
