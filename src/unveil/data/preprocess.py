"""What the network sees, and the exact way back to what the user gave.

A CT volume in Hounsfield units on its own grid becomes, for the network:

1. reoriented to the configured axis codes (``preprocess.orientation``, default RAS);
2. resampled to ``preprocess.spacing`` when set (image linear, label map nearest);
3. clipped to the HU window ``preprocess.hu_window`` and mapped linearly to ``[-1, 1]``;
4. the label map split into one float channel per configured label (``data.labels``).

Steps 1-2 are MONAI dictionary transforms applied to :class:`monai.data.MetaTensor`, so
every spatial operation is recorded on the tensor and MONAI's own ``inverse`` undoes it;
:meth:`Preprocessor.to_source` uses that record to put any network output back on the
original grid with the original affine, in HU, so outputs overlay the input in a viewer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd, Spacingd
from monai.utils import TraceKeys

from unveil.data.io import Volume
from unveil.data.regions import lung_depth
from unveil.errors import DataError

if TYPE_CHECKING:
    from unveil.config import DataConfig, PreprocessConfig

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

_IMAGE, _MASK = "image", "mask"


# --------------------------------------------------------------------------------------
# HU window
# --------------------------------------------------------------------------------------


def hu_to_unit(x: ArrayT, window: tuple[float, float]) -> ArrayT:
    """Clip HU to ``window = (low, high)`` and map it linearly to ``[-1, 1]``.

    ``low -> -1`` and ``high -> 1``.  Values outside the window are clipped to its edges
    first, so they come back from :func:`unit_to_hu` as ``low`` or ``high``, not as what
    they were: the window is the range of intensities the model can represent at all.

    Works on numpy arrays and torch tensors of any shape; integer inputs become float32,
    float inputs keep their dtype (float64 in, float64 out, which is what makes the
    inverse exact to rounding).
    """
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"HU window must be (low, high) with low < high, got {window}")
    if isinstance(x, np.ndarray):
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        return (np.clip(x, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hu_to_unit takes a numpy array or a torch tensor, not {type(x).__name__}")
    x = x if torch.is_floating_point(x) else x.float()
    return (x.clamp(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0


def unit_to_hu(y: ArrayT, window: tuple[float, float]) -> ArrayT:
    """The exact inverse of :func:`hu_to_unit` inside the window: ``[-1, 1] -> [low, high]``.

    No clipping: a network output slightly outside ``[-1, 1]`` maps to slightly outside the
    window, which is more honest than hiding it.  Numpy or torch, any shape.
    """
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"HU window must be (low, high) with low < high, got {window}")
    if isinstance(y, np.ndarray):
        y = y if np.issubdtype(y.dtype, np.floating) else y.astype(np.float32)
    else:
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"unit_to_hu takes a numpy array or a torch tensor, not {type(y).__name__}"
            )
        y = y if torch.is_floating_point(y) else y.float()
    return (y + 1.0) * ((hi - lo) / 2.0) + lo


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def mask_channel_names(data_cfg: DataConfig) -> list[str]:
    """Names of the one-hot mask channels, in channel order (``data.labels`` order)."""
    return list(data_cfg.labels)


def lung_channels(data_cfg: DataConfig) -> list[int]:
    """Channel indices of ``data.lung_labels`` in the one-hot mask (foreground for patches)."""
    names = mask_channel_names(data_cfg)
    return [names.index(n) for n in data_cfg.lung_labels]


def airway_channel(data_cfg: DataConfig) -> int | None:
    """Channel index of ``data.airway_label`` in the one-hot mask, or None when unset."""
    if data_cfg.airway_label is None:
        return None
    return mask_channel_names(data_cfg).index(data_cfg.airway_label)


#: Name of the optional position channel appended after the label channels.
POSITION_CHANNEL = "lung_height"
#: Name of the optional depth channel appended after the position channel.
DEPTH_CHANNEL = "lung_depth"


def lung_height(label_map: np.ndarray, affine: np.ndarray, data_cfg: DataConfig) -> np.ndarray:
    """Height of every voxel relative to the lungs: -1 at the lowest lung voxel, +1 at the
    highest (superior-inferior world axis, so any orientation gives the same map), linear
    and unclipped outside; zeros when the mask has no lung.  ``(X, Y, Z)`` float32.

    Why: effects of clinical attributes are often zonal (upper-lobe emphysema in smokers,
    basal fibrosis in IPF); with the height as an input a patch-based network does not
    have to infer where in the lungs a patch lies from the mask outline alone.  The zones
    of :mod:`unveil.data.regions` are thirds of the same extent.
    """
    lung = np.isin(label_map, [data_cfg.labels[n] for n in data_cfg.lung_labels])
    if not lung.any():
        return np.zeros(label_map.shape, dtype=np.float32)
    idx = np.indices(label_map.shape, dtype=np.float64)
    z = affine[2, 0] * idx[0] + affine[2, 1] * idx[1] + affine[2, 2] * idx[2] + affine[2, 3]
    lo, hi = float(z[lung].min()), float(z[lung].max())
    return (2.0 * (z - lo) / max(hi - lo, 1e-6) - 1.0).astype(np.float32)


def one_hot(label_map: ArrayT, data_cfg: DataConfig) -> ArrayT:
    """Integer label map ``(X, Y, Z)`` -> float32 one-hot ``(M, X, Y, Z)``.

    One channel per entry of ``data.labels``, in its order, with no background channel
    (background is where every channel is 0).  Values not named in ``data.labels`` fall
    in no channel; :meth:`Preprocessor.prepare` refuses such masks before calling this.
    Returns the same kind (numpy or torch) as it is given.
    """
    values = list(data_cfg.labels.values())
    if isinstance(label_map, np.ndarray):
        return np.stack([label_map == v for v in values]).astype(np.float32)
    return torch.stack([label_map == v for v in values]).to(torch.float32)


# --------------------------------------------------------------------------------------
# Preprocessor
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One subject as the network sees it, plus what is needed to go back.

    Attributes:
        image: ``(1, X', Y', Z')`` float32 torch tensor in ``[-1, 1]``.
        mask: ``(M, X', Y', Z')`` float32 one-hot (channels as :func:`mask_channel_names`),
            or None when no mask was given.
        label_map: ``(X', Y', Z')`` int32 label map on the preprocessed grid, or None.
        affine: ``(4, 4)`` voxel -> RAS mm of the preprocessed grid.
        source_affine: ``(4, 4)`` affine of the volume given to ``prepare``.
        source_shape: its shape ``(X, Y, Z)``.
        window: the HU window used, ``(low, high)``.
        operations: MONAI's record of the spatial transforms applied to the image (the
            ``applied_operations`` of its MetaTensor), replayed backwards by
            :meth:`Preprocessor.to_source`.
    """

    image: torch.Tensor
    mask: torch.Tensor | None
    label_map: torch.Tensor | None
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    window: tuple[float, float]
    operations: list[dict[str, Any]] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X', Y', Z')`` of the preprocessed grid."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]


class Preprocessor:
    """Orientation, spacing, HU window and one-hot labels, all from the config.

    Args:
        pre_cfg: ``preprocess`` section (orientation, spacing, hu_window).
        data_cfg: ``data`` section (label names and values).

    Spatial steps are MONAI's ``Orientationd`` and ``Spacingd`` (bilinear with border
    padding for the image, so the resampled edge is not pulled towards 0 HU = water;
    nearest with zero padding for the label map, so labels stay integers from the set).
    The HU window is :func:`hu_to_unit`, not MONAI's ``ScaleIntensityRanged``: that
    transform is not invertible in MONAI, and using one pair of functions for both
    directions is what makes the way back exact.
    """

    def __init__(self, pre_cfg: PreprocessConfig, data_cfg: DataConfig) -> None:
        self.pre_cfg = pre_cfg
        self.data_cfg = data_cfg
        self.window = (float(pre_cfg.hu_window[0]), float(pre_cfg.hu_window[1]))
        keys = [_IMAGE, _MASK]
        # labels=None: read the axis labels from the MetaTensor's space (RAS, our
        # convention) instead of MONAI's deprecated default.  allow_missing_keys: prepare
        # works without a mask, and the inverse is replayed on the image key alone.
        steps: list[Any] = [
            Orientationd(keys, axcodes=pre_cfg.orientation, labels=None, allow_missing_keys=True)
        ]
        if pre_cfg.spacing is not None:
            steps.append(
                Spacingd(
                    keys,
                    pixdim=tuple(float(s) for s in pre_cfg.spacing),
                    mode=("bilinear", "nearest"),
                    padding_mode=("border", "zeros"),
                    # float32 resampling: a float64 sampling grid for a 512^3 scan costs
                    # gigabytes, and float32 is accurate to ~0.01 HU here.
                    dtype=np.float32,
                    allow_missing_keys=True,
                )
            )
        self._spatial = Compose(steps)

    @property
    def mask_channels(self) -> list[str]:
        """Names of the mask channels, in order (the label channels, then the position)."""
        extra = [POSITION_CHANNEL] if self.pre_cfg.position_channel else []
        extra += [DEPTH_CHANNEL] if self.pre_cfg.depth_channel else []
        return mask_channel_names(self.data_cfg) + extra

    def prepare(self, image: Volume, mask: Volume | None = None) -> Prepared:
        """Preprocess one subject.

        Args:
            image: CT in HU, ``(X, Y, Z)`` with its affine.
            mask: integer label map on the same grid (same shape and affine), or None.

        Returns:
            :class:`Prepared`, with the image in ``[-1, 1]`` (HU outside the window clipped
            to its edges) and the mask one-hot on the preprocessed grid.

        Raises:
            DataError: the mask is not on the image grid, or holds label values that
                ``data.labels`` does not name.
        """
        where = f" ({image.path})" if image.path else ""
        data: dict[str, Any] = {
            _IMAGE: MetaTensor(
                torch.as_tensor(np.asarray(image.array, dtype=np.float32))[None],
                affine=torch.as_tensor(image.affine, dtype=torch.float64),
            )
        }
        if mask is not None:
            if not image.same_grid(mask):
                raise DataError(
                    f"mask{f' {mask.path}' if mask.path else ''} (shape {mask.shape}) is not on "
                    f"the grid of its image{where} (shape {image.shape}); resample the mask "
                    "onto the image grid with the same affine."
                )
            self._check_labels(mask)
            # Carried as float through the nearest resampler (grid_sample needs floats);
            # label values are small integers, exactly representable in float32.
            data[_MASK] = MetaTensor(
                torch.as_tensor(np.asarray(mask.array, dtype=np.float32))[None],
                affine=torch.as_tensor(mask.affine, dtype=torch.float64),
            )
        out = self._spatial(data)
        img_mt = out[_IMAGE]
        unit = hu_to_unit(img_mt.as_tensor().to(torch.float32), self.window).contiguous()
        label_map = onehot = None
        if mask is not None:
            label_map = torch.round(out[_MASK].as_tensor()[0]).to(torch.int32).contiguous()
            onehot = one_hot(label_map, self.data_cfg)
            if self.pre_cfg.position_channel:
                height = lung_height(label_map.numpy(), np.asarray(img_mt.affine), self.data_cfg)
                onehot = torch.cat([onehot, torch.from_numpy(height)[None]])
            if self.pre_cfg.depth_channel:
                depth = lung_depth(label_map.numpy(), np.asarray(img_mt.affine), self.data_cfg)
                onehot = torch.cat([onehot, torch.from_numpy(depth)[None]])
        return Prepared(
            image=unit,
            mask=onehot,
            label_map=label_map,
            affine=np.asarray(img_mt.affine, dtype=np.float64).copy(),
            source_affine=image.affine.copy(),
            source_shape=image.shape,
            window=self.window,
            operations=_portable_operations(img_mt.applied_operations),
        )

    def to_source(
        self, tensor: torch.Tensor | np.ndarray, prepared: Prepared, is_unit: bool = True
    ) -> Volume:
        """Put an image on the preprocessed grid back onto the source grid, in HU.

        Args:
            tensor: ``(1, X', Y', Z')`` or ``(X', Y', Z')`` on ``prepared``'s grid; values
                in ``[-1, 1]`` when ``is_unit`` (mapped with :func:`unit_to_hu`), else
                already HU (or an HU difference map).
            prepared: what :meth:`prepare` returned for this subject.

        Returns:
            float32 :class:`Volume` with ``prepared.source_shape`` and
            ``prepared.source_affine``.  Inside the window the round trip
            ``prepare -> to_source`` returns the input HU (exactly for a pure orientation
            change, to interpolation error after resampling); outside it, the window edge.
        """
        hu = self._as_channel_first(tensor, prepared)
        if is_unit:
            hu = unit_to_hu(hu, prepared.window)
        return self._invert(hu, prepared, mode=None)

    def labels_to_source(self, label_map: torch.Tensor | np.ndarray, prepared: Prepared) -> Volume:
        """An integer label map ``(X', Y', Z')`` on the preprocessed grid -> int32 source grid.

        The same recorded operations as :meth:`to_source`, replayed with nearest
        interpolation and zero padding so labels stay integers from the set.
        """
        lab = self._as_channel_first(label_map, prepared)
        vol = self._invert(lab, prepared, mode="nearest")
        return vol.with_array(np.rint(vol.array).astype(np.int32))

    # -- internals ----------------------------------------------------------------------

    def _check_labels(self, mask: Volume) -> None:
        present = np.unique(mask.array)
        unknown = sorted(set(present.tolist()) - {0, *self.data_cfg.labels.values()})
        if unknown:
            where = f" {mask.path}" if mask.path else ""
            shown = ", ".join(str(v) for v in unknown[:8])
            raise DataError(
                f"mask{where} holds label values {shown} that data.labels does not name; add "
                "them to data.labels in the config or set them to 0 in the mask."
            )

    @staticmethod
    def _as_channel_first(x: torch.Tensor | np.ndarray, prepared: Prepared) -> torch.Tensor:
        t = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[0] != 1 or tuple(t.shape[1:]) != prepared.shape:
            raise ValueError(
                f"expected a (1, {', '.join(map(str, prepared.shape))}) tensor on the "
                f"preprocessed grid, got shape {tuple(x.shape)}"
            )
        return t

    def _invert(self, t: torch.Tensor, prepared: Prepared, mode: str | None) -> Volume:
        """Replay ``prepared.operations`` backwards on ``t`` (1, X', Y', Z') with MONAI.

        MONAI's inverse is used rather than a hand-made ``SpatialResample`` to the source
        affine: it undoes each recorded step as it was done (orientation by exact flips and
        permutations without interpolation, spacing by resampling to the recorded source
        affine and shape with the recorded mode), so a pure reorientation round-trips
        bit-exactly and nothing about the source grid has to be re-derived here.
        """
        ops = copy.deepcopy(prepared.operations)
        if mode is not None:
            for op in ops:
                extra = op.get("extra_info", {})
                if "mode" in extra:
                    extra["mode"] = mode
                    extra["padding_mode"] = "zeros"
        mt = MetaTensor(
            t, affine=torch.as_tensor(prepared.affine, dtype=torch.float64), applied_operations=ops
        )
        out = self._spatial.inverse({_IMAGE: mt})[_IMAGE]
        array = out.as_tensor()[0].to(torch.float32).numpy()
        affine = np.asarray(out.affine, dtype=np.float64)
        if array.shape != tuple(prepared.source_shape) or not np.allclose(
            affine, prepared.source_affine, atol=1e-4
        ):
            # The recorded operations do not belong to this pipeline (e.g. a Prepared made
            # with another orientation/spacing config): a programming error, not user input.
            raise ValueError(
                "inverting the preprocessing did not return to the source grid; was "
                "`prepared` made by a Preprocessor with the same preprocess config?"
            )
        # Write the recorded source affine itself, not the float round-trip of it.
        return Volume(np.ascontiguousarray(array), prepared.source_affine.copy())


def _portable_operations(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MONAI's applied-operation records, detached from the transform instances.

    MONAI checks that an operation is inverted by the very transform object that applied
    it (by ``id``).  Replacing the id with ``TraceKeys.NONE`` (MONAI's documented way to
    skip that check) lets any :class:`Preprocessor` built from the same config invert a
    :class:`Prepared`, including one in another process or restored from disk.
    """
    out = copy.deepcopy(list(ops))
    for op in out:
        op[TraceKeys.ID] = TraceKeys.NONE
    return out
