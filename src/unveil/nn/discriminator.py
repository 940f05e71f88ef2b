"""3D PatchGAN discriminator that sees the image with its mask, and optionally the text.

The published discriminator saw the image alone, so nothing pushed the generator to
respect the mask or the clinical text.  Here the one-hot mask is concatenated to the
image at the input (pix2pix's conditional discriminator), and, when ``cond_dim`` is given,
a projection term (Miyato & Koyama 2018, "cGANs with projection discriminator") adds, per
patch, the inner product of the last feature map with a linear embedding of the pooled
text: ``logit(b, p) = f(phi(x))(b, p) + <embed(t_b), phi(x)(b, :, p)>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from unveil.conditioning import TextCondition
from unveil.nn.fusion import pooled_or_null


class ConditionalPatchDiscriminator(nn.Module):
    """PatchGAN on ``[image ; mask]`` with an optional text projection term.

    Args:
        image_channels: channels of the (real or generated) image.
        mask_channels: channels of the one-hot mask.
        channels: filters of the first layer (doubled per layer).
        layers: convolution layers after the first (MONAI's ``num_layers_d``); all but
            the last halve the resolution.
        cond_dim: width of the pooled text; None for a text-blind discriminator.
        norm: MONAI norm name for the hidden layers.  Instance norm by default: batch norm
            would mix statistics across the real and fake samples of a tiny 3D batch.

    ``forward(image, mask, cond)``: ``image`` ``(B, C, D, H, W)``, ``mask`` ``(B, M, D, H,
    W)``, ``cond`` a :class:`TextCondition` or None -> logits ``(B, 1, d, h, w)`` with
    ``d = D / 2**layers - 1`` (for even sizes; see :meth:`output_shape`).
    """

    def __init__(
        self,
        image_channels: int,
        mask_channels: int,
        channels: int = 32,
        layers: int = 3,
        cond_dim: int | None = None,
        norm: str = "INSTANCE",
    ) -> None:
        super().__init__()
        if image_channels < 1 or mask_channels < 0:
            raise ValueError(
                f"the discriminator needs image_channels >= 1 and mask_channels >= 0 (got "
                f"{image_channels} and {mask_channels})."
            )
        if channels < 1 or layers < 1:
            raise ValueError(
                f"the discriminator needs channels >= 1 and layers >= 1 (got {channels} and {layers})."
            )
        if cond_dim is not None and cond_dim < 1:
            raise ValueError(f"cond_dim must be positive or None (got {cond_dim}).")
        self.image_channels = image_channels
        self.mask_channels = mask_channels
        self.layers = layers
        self.cond_dim = cond_dim
        self.instance_norm = str(norm).upper().startswith("INSTANCE")
        # MONAI's PatchDiscriminator returns every intermediate output; the last is the
        # logits and the one before is the feature map the projection term needs.  A 3x3x3
        # final conv (padding 1) keeps the logits on the grid of that feature map.
        self.net = PatchDiscriminator(
            spatial_dims=3,
            channels=channels,
            in_channels=image_channels + mask_channels,
            out_channels=1,
            num_layers_d=layers,
            kernel_size=4,
            norm=norm,
            last_conv_kernel_size=3,
        )
        self.feature_channels = channels * 2**layers
        if cond_dim is not None:
            self.embed = nn.Linear(cond_dim, self.feature_channels, bias=False)
            self.null_pooled = nn.Parameter(torch.zeros(cond_dim))
        else:
            self.embed = None
            self.register_parameter("null_pooled", None)
        self.reset_text_parameters()

    def reset_text_parameters(self) -> None:
        """N(0, 0.02) for the text embedding, as MONAI initialises the convolutions, so the
        projection term starts on the scale of the patch logits; small random null vector."""
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=0.02)
            nn.init.normal_(self.null_pooled, std=0.02)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, int, int]:
        """Logit grid ``(d, h, w)`` for an input grid ``(D, H, W)``."""
        out = []
        for s in spatial:
            s = (s + 2 - 4) // 2 + 1  # initial conv: k4 s2 p1
            for i in range(self.layers):
                stride = 1 if i == self.layers - 1 else 2
                s = (s + 2 - 4) // stride + 1
            out.append(s)
        return tuple(out)

    def _check(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        if image.ndim != 5 or image.shape[1] != self.image_channels:
            raise ValueError(
                f"image must be (B, {self.image_channels}, D, H, W), got {tuple(image.shape)}."
            )
        if (
            mask.ndim != 5
            or mask.shape[1] != self.mask_channels
            or mask.shape[2:] != image.shape[2:]
            or mask.shape[0] != image.shape[0]
        ):
            raise ValueError(
                f"mask must be (B, {self.mask_channels}, D, H, W) on the image grid "
                f"{tuple(image.shape[2:])}, got {tuple(mask.shape)}."
            )
        grid = self.output_shape(image.shape[2:])
        # Instance norm needs more than one voxel in the last normalised layer.
        smallest = 1 if not self.instance_norm else 2
        if min(grid) < 1 or (grid[0] * grid[1] * grid[2]) < smallest:
            need = 2 ** (self.layers + 1)
            raise ValueError(
                f"input grid {tuple(image.shape[2:])} is too small for a {self.layers}-layer "
                f"PatchGAN (logit grid {grid}); use patches of at least {need} voxels per axis "
                "or fewer discriminator layers."
            )

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, cond: TextCondition | None = None
    ) -> torch.Tensor:
        """``image`` ``(B, C, D, H, W)``, ``mask`` ``(B, M, D, H, W)`` -> logits ``(B, 1, d, h, w)``."""
        self._check(image, mask)
        outs = self.net(torch.cat([image, mask.to(image.dtype)], dim=1))
        logits = outs[-1]
        if self.embed is None:
            return logits
        features = outs[-2]  # (B, F, d, h, w), after norm and LeakyReLU
        pooled = pooled_or_null(cond, self.null_pooled, image.shape[0], features)
        projection = torch.einsum("bfdhw,bf->bdhw", features, self.embed(pooled))
        return logits + projection.unsqueeze(1)
