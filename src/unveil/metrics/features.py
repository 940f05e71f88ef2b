"""Feature networks for FID / KID, and the inputs they see.

FID and KID compare *feature* distributions, so they need a network.  None can be
downloaded on these machines and none ships with unveil, so the user names a local
TorchScript file (``torch.jit.save`` of a traced or scripted network; or a ``.pt2``
file from ``torch.export.save``, since ``torch.jit`` is deprecated in recent torch) and
:func:`load_feature_network` wraps it as a :class:`FeatureExtractor`.  Without a file it
raises :class:`~unveil.errors.UnveilError` with one sentence saying how to make one; the
caller (``unveil evaluate``) runs the weight-free measures
(:mod:`unveil.metrics.distribution` histograms, :mod:`unveil.metrics.texture`) *before*
asking for the network, so they are reported either way.

What the network sees (the published code got both wrong):

- 2D: :func:`slices_for_fid` cuts a volume into axial slices, maps each with the *fixed*
  HU window to ``[0, 1]`` (never per-slice min-max, which would erase exactly the
  intensity shift the study is about) and *replicates* the one slice into three channels
  (never three neighbouring slices packed as RGB).  Shape ``(N, 3, H, W)``.
- 3D: :func:`volumes_for_fid` maps whole volumes with the same fixed window, shape
  ``(N, 1, X, Y, Z)``.

Anything a particular network expects beyond ``[0, 1]`` input (ImageNet mean/std
normalisation, a 299x299 size for Inception-v3) belongs inside the traced module or in
the ``size`` argument here, so the metric code stays network-agnostic.  A network output
with spatial axes (a feature map) is global-average-pooled to ``(N, F)``; a tuple output
(Inception in training mode) contributes its first element.

:class:`RandomProjectionFeatures` is a fixed random linear map of pooled intensities.  It
is NOT a perceptual network and its FID is not comparable with any published FID; it
exists so the FID/KID code can be tested without weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

from unveil.errors import UnveilError
from unveil.metrics.paired import window01

if TYPE_CHECKING:
    import torch

Kind = Literal["2d", "3d"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images to feature vectors for FID / KID."""

    def extract_2d(self, slices: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` float in ``[0, 1]`` -> ``(N, F)`` float64."""
        ...

    def extract_3d(self, volumes: np.ndarray) -> np.ndarray:
        """``(N, 1, X, Y, Z)`` float in ``[0, 1]`` -> ``(N, F)`` float64."""
        ...


def missing_network_message(kind: Kind) -> str:
    """The one sentence shown when FID/KID are asked for without a feature network file."""
    if kind == "2d":
        how = (
            "for 2D with torchvision, m = torchvision.models.inception_v3(weights='DEFAULT'); "
            "m.fc = torch.nn.Identity(); net = torch.nn.Sequential(torchvision.transforms"
            ".Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), m).eval(); "
            "torch.jit.trace(net, torch.rand(1, 3, 299, 299)).save('inception.pt'), used with "
            "299-pixel slices"
        )
    else:
        how = (
            "for 3D, a MedicalNet ResNet with its weights loaded and the classifier removed, "
            "torch.jit.trace(net.eval(), torch.rand(1, 1, 64, 64, 64)).save('medicalnet.pt')"
        )
    return (
        f"FID and KID ({kind}) need a feature network file and none was given: on a machine "
        f"with internet save one as TorchScript ({how}) or as a torch.export .pt2 file, copy it "
        "here and name its path; "
        "the weight-free histogram and texture measures were computed without it."
    )


def load_feature_network(
    path: str | Path | None, kind: Kind, *, device: str = "cpu", batch_size: int = 16
) -> TorchScriptFeatures:
    """Load the user's TorchScript feature network.

    Args:
        path: a TorchScript file (``.pt`` / ``.ts``) written by ``torch.jit.save`` (or
            ``.save`` of a traced / scripted module), or a ``.pt2`` file written by
            ``torch.export.save`` (the successor format; export with a dynamic batch
            dimension); ``None`` when the user named none.
        kind: ``"2d"`` (input ``(B, 3, H, W)``) or ``"3d"`` (input ``(B, 1, X, Y, Z)``).
        device: where the network runs.
        batch_size: images per forward pass.

    Raises:
        UnveilError: ``path`` is None (see :func:`missing_network_message`), does not
            exist, or is not a TorchScript file (a state dict or a pickled model cannot be
            rebuilt without its code, so it is refused with a sentence saying so).
    """
    if kind not in ("2d", "3d"):
        raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")
    if path is None:
        raise UnveilError(missing_network_message(kind))
    p = Path(path)
    if not p.is_file():
        raise UnveilError(
            f"feature network file {p} does not exist; name an existing TorchScript file "
            "(written with torch.jit.save) or leave it out to skip FID and KID."
        )
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    try:
        if p.suffix.lower() == ".pt2":
            # torch.export's format, the successor of TorchScript (torch.jit warns that it
            # is deprecated in recent torch); train/eval mode is fixed at export time.
            module = torch.export.load(str(p)).module()
        else:
            with warnings.catch_warnings():
                # The deprecation notice is for the user's future files, not this run.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(p), map_location=device)
            module.eval()
    except Exception as err:  # torch raises RuntimeError/ValueError/pickle errors alike
        raise UnveilError(
            f"feature network file {p} is not a TorchScript (or .pt2 torch.export) file "
            f"({type(err).__name__}); save the network with torch.jit.trace(net, example)"
            ".save(path) or torch.export.save(torch.export.export(net, (example,)), 'net.pt2'), "
            "since a state dict or pickled model cannot be rebuilt here."
        ) from err
    return TorchScriptFeatures(module, kind, device=device, batch_size=batch_size, path=p)


class TorchScriptFeatures:
    """A :class:`FeatureExtractor` around a TorchScript (or exported) module of one kind.

    Args:
        module: the loaded module, input ``(B, 3, H, W)`` for ``"2d"`` or
            ``(B, 1, X, Y, Z)`` for ``"3d"``, output ``(B, F)`` or ``(B, F, ...)``
            (pooled over the trailing axes) or a tuple whose first element is that.
        kind: which of :meth:`extract_2d` / :meth:`extract_3d` this network serves.
        device: where the module runs.
        batch_size: images per forward pass.
        path: the file it came from, for messages.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        kind: Kind,
        *,
        device: str = "cpu",
        batch_size: int = 16,
        path: Path | None = None,
    ) -> None:
        if kind not in ("2d", "3d"):
            raise ValueError(f"kind must be '2d' or '3d', got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.module = module
        self.kind = kind
        self.device = device
        self.batch_size = batch_size
        self.path = path

    def extract_2d(self, slices: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, F)`` float64."""
        self._need("2d")
        return self._run(_check_input(slices, 4, 3, "slices"))

    def extract_3d(self, volumes: np.ndarray) -> np.ndarray:
        """``(N, 1, X, Y, Z)`` in ``[0, 1]`` -> ``(N, F)`` float64."""
        self._need("3d")
        return self._run(_check_input(volumes, 5, 1, "volumes"))

    def _need(self, kind: Kind) -> None:
        if self.kind != kind:
            where = f" from {self.path}" if self.path else ""
            raise UnveilError(
                f"the feature network{where} was loaded as {self.kind} but {kind} features were "
                f"asked for; name a {kind} network for the {kind} FID/KID."
            )

    def _run(self, x: np.ndarray) -> np.ndarray:
        # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
        import torch

        feats = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                batch = torch.from_numpy(x[start : start + self.batch_size]).float()
                out = self.module(batch.to(self.device))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                feats.append(_pool(out))
        return np.concatenate(feats, axis=0)


class RandomProjectionFeatures:
    """Fixed random linear features of pooled intensities; for tests only.

    NOT a perceptual network: the image is average-pooled to a ``grid``-sized grid and
    multiplied by a Gaussian matrix drawn once from ``seed``.  It sees mean intensity
    (so an HU shift moves its features) and coarse layout, nothing else.

    Args:
        dim: feature dimension ``F``.
        grid: pooled grid size per spatial axis.
        seed: seed of the projection matrices (the same seed gives the same features).
    """

    def __init__(self, dim: int = 32, grid: int = 4, seed: int = 0) -> None:
        # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.grid = grid
        n2, n3 = 3 * grid * grid, grid**3
        # Scaled so each feature has O(1) variance for [0, 1] inputs.
        self.w2 = torch.randn(n2, dim, generator=gen, dtype=torch.float64) / n2**0.5
        self.w3 = torch.randn(n3, dim, generator=gen, dtype=torch.float64) / n3**0.5

    def extract_2d(self, slices: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, dim)`` float64."""
        # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(_check_input(slices, 4, 3, "slices")).double()
        pooled = F.adaptive_avg_pool2d(x, self.grid).flatten(1)
        return (pooled @ self.w2).numpy()

    def extract_3d(self, volumes: np.ndarray) -> np.ndarray:
        """``(N, 1, X, Y, Z)`` in ``[0, 1]`` -> ``(N, dim)`` float64."""
        # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(_check_input(volumes, 5, 1, "volumes")).double()
        pooled = F.adaptive_avg_pool3d(x, self.grid).flatten(1)
        return (pooled @ self.w3).numpy()


def slices_for_fid(
    volume_hu: np.ndarray,
    hu_window: tuple[float, float],
    axis: int = 2,
    every: int = 1,
    size: int | tuple[int, int] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Axial slices of one volume as 2D feature-network input, ``(N, 3, H, W)`` float32.

    Each slice is clipped to the fixed ``hu_window`` and mapped linearly to ``[0, 1]``
    (``low`` -> 0, ``high`` -> 1), the same map for every slice and every subject, and the
    one slice is copied into all three channels.

    Args:
        volume_hu: ``(X, Y, Z)`` in HU.
        hu_window: ``(low, high)`` HU.
        axis: the slicing axis (2 = axial for the RAS-like ``(X, Y, Z)`` arrays used
            here); the in-plane axes keep their order, so ``H, W`` are the two others.
        every: keep every ``every``-th slice.
        size: resize each slice to ``size`` (int or ``(H, W)``) with bilinear,
            antialiased interpolation; ``None`` keeps the native size.
        mask: optional ``(X, Y, Z)``; only slices where it has a non-zero voxel are kept
            (e.g. the lung mask, to compare lung slices only).
    """
    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise ValueError(f"volume_hu must be (X, Y, Z), got shape {vol.shape}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    x = np.moveaxis(window01(vol, hu_window), axis, 0)
    keep = np.arange(x.shape[0])
    if mask is not None:
        m = np.moveaxis(np.asarray(mask) != 0, axis, 0)
        if m.shape != x.shape:
            raise ValueError(f"mask has shape {np.asarray(mask).shape}, volume {vol.shape}")
        keep = keep[m.reshape(m.shape[0], -1).any(axis=1)]
    x = x[keep[::every]].astype(np.float32)
    if size is not None:
        x = _resize(x[:, None], _pair(size, 2))[:, 0]
    # Replicate one slice into three channels (not three neighbouring slices).
    return np.repeat(x[:, None], 3, axis=1)


def volumes_for_fid(
    volumes_hu: Sequence[np.ndarray],
    hu_window: tuple[float, float],
    size: int | tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Whole volumes as 3D feature-network input, ``(N, 1, X, Y, Z)`` float32 in ``[0, 1]``.

    Each ``(X, Y, Z)`` HU volume is mapped with the fixed ``hu_window``; ``size`` resizes
    them (trilinear) to a common grid, required when their shapes differ.
    """
    out = []
    for v in volumes_hu:
        x = window01(np.asarray(v), hu_window).astype(np.float32)
        if x.ndim != 3:
            raise ValueError(f"each volume must be (X, Y, Z), got shape {x.shape}")
        if size is not None:
            x = _resize(x[None, None], _pair(size, 3))[0, 0]
        out.append(x)
    shapes = {x.shape for x in out}
    if len(shapes) > 1:
        raise ValueError(f"volumes have different shapes {sorted(shapes)}; pass size=")
    return np.stack(out)[:, None]


# --------------------------------------------------------------------------- helpers


def _pair(size: int | Sequence[int], n: int) -> tuple[int, ...]:
    t = (int(size),) * n if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(t) != n or min(t) < 1:
        raise ValueError(f"size must be a positive int or {n} positive ints, got {size}")
    return t


def _resize(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Resize ``(N, C, *spatial)`` with torch interpolation (antialiased when 2D)."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x))
    if len(size) == 2:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        # 3D antialiasing is not available in torch; trilinear is the usual choice.
        t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return t.clamp_(0.0, 1.0).numpy()


def _check_input(x: np.ndarray, ndim: int, channels: int, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if a.ndim != ndim or a.shape[1] != channels:
        want = "(N, 3, H, W)" if ndim == 4 else "(N, 1, X, Y, Z)"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if a.size and (a.min() < -1e-4 or a.max() > 1 + 1e-4):
        raise ValueError(
            f"{name} must be in [0, 1] (window-mapped HU), got values in "
            f"[{a.min():.3g}, {a.max():.3g}]; map them with slices_for_fid / volumes_for_fid."
        )
    return a


def _pool(out: torch.Tensor) -> np.ndarray:
    """``(B, F, ...)`` -> ``(B, F)`` by global average over trailing axes; float64 numpy."""
    if out.ndim == 1:
        out = out[:, None]
    elif out.ndim > 2:
        out = out.flatten(2).mean(dim=2)
    return out.detach().double().cpu().numpy()
