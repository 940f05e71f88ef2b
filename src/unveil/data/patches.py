"""Foreground-aware random patches for training, with exactly resumable randomness.

Each patch: a subject drawn uniformly; then, with probability ``pos_fraction``, a patch
centred on a voxel drawn uniformly from the subject's foreground (the lung channels of the
mask), clipped so the patch fits; otherwise a patch position drawn uniformly among all
positions where the patch fits (MONAI ``RandSpatialCrop``'s rule).

Every random number comes from one injected :class:`numpy.random.Generator`, so the
sampler's whole state is the generator's ``bit_generator.state``: saving it with the
checkpoint and restoring it makes a resumed run draw the very patches an uninterrupted run
would have drawn.

Why not MONAI's ``RandCropByPosNegLabeld`` / ``generate_pos_neg_label_crop_centers``: they
take a legacy ``RandomState`` and need explicit background index arrays, i.e. a list of
every voxel of every subject for "anywhere" patches (hundreds of MB per CT); drawing the
centre straight from the generator is two lines and keeps one random stream.  Padding of
volumes smaller than a patch does use MONAI's ``SpatialPad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import SpatialPad


class PatchSampler:
    """Draw training patches from preprocessed subjects.

    Args:
        images: one ``(1, X, Y, Z)`` float tensor per subject, in ``[-1, 1]``.
        masks: one ``(M, X, Y, Z)`` one-hot float tensor per subject (same spatial shape
            as its image; the same ``M`` for all).
        patch_size: ``(px, py, pz)``.
        pos_fraction: probability that a patch is centred on a foreground voxel; a subject
            without foreground always gets an "anywhere" patch.
        rng: the only source of randomness (see :meth:`state_dict`).
        fg_channels: mask channels whose union is the foreground (usually
            :func:`unveil.data.preprocess.lung_channels`); None means all channels.

    Volumes smaller than the patch along an axis are padded symmetrically, the image with
    -1 (the bottom of the HU window: air) and the mask with 0 (background).
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        patch_size: Sequence[int],
        pos_fraction: float,
        rng: np.random.Generator,
        fg_channels: Sequence[int] | None = None,
    ) -> None:
        if len(images) == 0:
            raise ValueError("PatchSampler needs at least one subject")
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {patch_size}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed))"
            )
        self.pos_fraction = float(pos_fraction)
        self.rng = rng
        n_channels = int(masks[0].shape[0])
        self.fg_channels = list(range(n_channels)) if fg_channels is None else list(fg_channels)
        if not self.fg_channels or any(not 0 <= c < n_channels for c in self.fg_channels):
            raise ValueError(
                f"fg_channels {fg_channels} must be non-empty indices below {n_channels}"
            )

        pad_img = SpatialPad(self.patch_size, method="symmetric", mode="constant", value=-1.0)
        pad_msk = SpatialPad(self.patch_size, method="symmetric", mode="constant", value=0.0)
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        # Flat indices of foreground voxels per subject: drawing a foreground centre is then
        # one integer draw.  int32 halves the memory when the volume allows it.
        self._fg: list[np.ndarray] = []
        for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
            if img.ndim != 4 or img.shape[0] != 1:
                raise ValueError(f"image {i} must be (1, X, Y, Z), got {tuple(img.shape)}")
            if msk.ndim != 4 or msk.shape[0] != n_channels or msk.shape[1:] != img.shape[1:]:
                raise ValueError(
                    f"mask {i} must be ({n_channels}, {', '.join(map(str, img.shape[1:]))}), "
                    f"got {tuple(msk.shape)}"
                )
            if any(s < p for s, p in zip(img.shape[1:], self.patch_size, strict=True)):
                img = _plain(pad_img(img))
                msk = _plain(pad_msk(msk))
            self.images.append(img)
            self.masks.append(msk)
            fg = (msk[self.fg_channels] > 0.5).any(0).reshape(-1).cpu().numpy()
            idx = np.flatnonzero(fg)
            self._fg.append(idx.astype(np.int32) if fg.size < 2**31 else idx)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_channels(self) -> int:
        """``M``, the number of mask channels."""
        return int(self.masks[0].shape[0])

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Draw ``batch_size`` patches.

        Returns:
            ``image`` ``(B, 1, px, py, pz)`` float32, ``mask`` ``(B, M, px, py, pz)`` float32,
            ``index`` ``(B,)`` int64 subject indices (into the lists given), ``start``
            ``(B, 3)`` int64 patch corner in the (padded) volume, ``positive`` ``(B,)`` bool
            whether the centre was drawn from the foreground.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        p = np.asarray(self.patch_size)
        imgs, msks, index, starts, positive = [], [], [], [], []
        for _ in range(batch_size):
            # Draw order is fixed (subject, coin, position) so the stream is reproducible.
            s = int(self.rng.integers(len(self.images)))
            shape = np.asarray(self.images[s].shape[1:])
            pos = bool(self.rng.random() < self.pos_fraction) and self._fg[s].size > 0
            if pos:
                flat = self._fg[s][int(self.rng.integers(self._fg[s].size))]
                centre = np.asarray(np.unravel_index(int(flat), tuple(shape)))
                # The centre voxel stays inside the patch after clipping (see tests).
                start = np.clip(centre - p // 2, 0, shape - p)
            else:
                start = self.rng.integers(0, shape - p + 1)
            x, y, z = (int(v) for v in start)
            sl = (slice(None), slice(x, x + p[0]), slice(y, y + p[1]), slice(z, z + p[2]))
            imgs.append(self.images[s][sl])
            msks.append(self.masks[s][sl])
            index.append(s)
            starts.append(start)
            positive.append(pos)
        return {
            "image": torch.stack(imgs).to(torch.float32),
            "mask": torch.stack(msks).to(torch.float32),
            "index": torch.as_tensor(index, dtype=torch.int64),
            "start": torch.as_tensor(np.stack(starts), dtype=torch.int64),
            "positive": torch.as_tensor(positive, dtype=torch.bool),
        }

    def state_dict(self) -> dict[str, Any]:
        """The generator's ``bit_generator.state`` (plain ints and strings; picklable)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the next patches continue that stream."""
        bg_state = state["bit_generator"]
        name = type(self.rng.bit_generator).__name__
        if bg_state.get("bit_generator") != name:
            raise ValueError(
                f"sampler state is for a {bg_state.get('bit_generator')} generator, this "
                f"sampler uses {name}"
            )
        self.rng.bit_generator.state = bg_state


def _plain(t: Any) -> torch.Tensor:
    """MONAI returns MetaTensors; training code wants plain tensors (cheaper to stack)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t
