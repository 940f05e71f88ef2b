"""Realism as distances between distributions: FID, KID on features, Wasserstein on HU.

Two families:

- *Feature distances* (need a feature network, see :mod:`unveil.metrics.features`):
  :func:`fid` (Fréchet distance between Gaussians fitted to the two feature sets) and
  :func:`kid` (unbiased squared MMD with the cubic polynomial kernel, averaged over
  random subsets).  Inputs are feature matrices ``(N, F)`` from
  ``FeatureExtractor.extract_2d(slices_for_fid(...))`` or ``extract_3d(...)``.
- *Weight-free HU distances* (always run): :func:`region_wasserstein` is the
  1-Wasserstein (earth mover's) distance between two sets of HU values, in HU; a uniform
  shift of ``s`` HU gives exactly ``s``.  :func:`histogram_distances` applies it per named
  region, pooling the voxels of every volume of each set.

For a per-subject figure with a confidence interval (paired evaluation: the generated
volume of a subject against its real scan), call :func:`histogram_distances` with one
volume per set and aggregate the per-subject dicts with
:func:`unveil.metrics.intervals.summarize`; for a cohort figure pass all volumes at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))`` with unbiased
    covariances (``ddof=1``).

    Hand-written rather than MONAI's ``FIDMetric``: MONAI takes ``scipy.linalg.sqrtm`` of
    the non-symmetric product ``S_a S_b``, which returns complex residue (and raises when
    it is large) on the rank-deficient covariances of small sets, and it prints to stdout.
    Here the trace term uses the identity ``Tr((S_a S_b)^(1/2)) = sum sqrt(eig(A))`` with
    the symmetric PSD ``A = S_a^(1/2) S_b S_a^(1/2)`` (similar to ``S_a S_b``), computed with
    ``eigh`` and negative round-off eigenvalues clipped to 0, so the result is real by
    construction and equals the ``sqrtm`` form up to round-off (checked in the tests).
    Tiny negative totals from round-off are returned as 0.

    Args:
        feats_a: ``(N_a, F)`` features, ``N_a >= 2``.
        feats_b: ``(N_b, F)`` features, ``N_b >= 2``.
    """
    a = _features(feats_a, "feats_a")
    b = _features(feats_b, "feats_b")
    _same_dim(a, b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(s_a)
    inner = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)
    return max(value, 0.0)


def draw_subsets(
    n_a: int, n_b: int, subsets: int, subset_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the KID subsets: ``(subsets, m)`` into set a and ``(subsets, m)`` into b.

    ``m = min(subset_size, n_a, n_b)``; every row is drawn *without* replacement (no
    sample appears twice in one subset, which would bias the unbiased estimator towards
    the diagonal terms it excludes); rows are independent of each other.
    """
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}")
    m = min(subset_size, n_a, n_b)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {n_a} and {n_b}")
    idx_a = np.stack([rng.choice(n_a, size=m, replace=False) for _ in range(subsets)])
    idx_b = np.stack([rng.choice(n_b, size=m, replace=False) for _ in range(subsets)])
    return idx_a, idx_b


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    *,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2, mean and standard deviation over subsets.

    Kernel ``k(x, y) = (x . y / F + 1)^3`` (Bińkowski et al. 2018).  On each subset of
    ``m`` samples per set (:func:`draw_subsets`, without replacement, ``m`` capped at the
    smaller set) the unbiased estimate is

    ``sum_{i != j} k(a_i, a_j) / (m(m-1)) + sum_{i != j} k(b_i, b_j) / (m(m-1))
    - 2 sum_{i, j} k(a_i, b_j) / m^2``,

    which is centred on the true MMD^2 and so can be slightly negative for two samples of
    one distribution.  Hand-written because MONAI's ``MMDMetric`` uses a linear kernel on
    the raw inputs, not the polynomial kernel KID is defined with.

    Args:
        feats_a: ``(N_a, F)`` features.
        feats_b: ``(N_b, F)`` features.
        subsets: number of random subsets.
        subset_size: samples per set in each subset (capped at ``min(N_a, N_b)``).
        rng: draws the subsets.

    Returns:
        ``(mean, std)`` of the per-subset estimates (``std`` with ``ddof=0``, as in the
        reference implementations; 0 for a single subset).
    """
    a = _features(feats_a, "feats_a")
    b = _features(feats_b, "feats_b")
    _same_dim(a, b)
    idx_a, idx_b = draw_subsets(len(a), len(b), subsets, subset_size, rng)
    dim = a.shape[1]
    m = idx_a.shape[1]
    values = np.empty(subsets)
    for s in range(subsets):
        x, y = a[idx_a[s]], b[idx_b[s]]
        k_xx = (x @ x.T / dim + 1.0) ** 3
        k_yy = (y @ y.T / dim + 1.0) ** 3
        k_xy = (x @ y.T / dim + 1.0) ** 3
        sum_xx = k_xx.sum() - np.trace(k_xx)
        sum_yy = k_yy.sum() - np.trace(k_yy)
        values[s] = (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def region_wasserstein(real_hu_values: np.ndarray, fake_hu_values: np.ndarray) -> float:
    """1-Wasserstein distance between two sets of HU values, in HU (``scipy.stats``).

    The sets may differ in size; a uniform shift of ``s`` HU gives ``|s|``.  Raises
    ``ValueError`` on an empty set (the caller reports the region as missing).
    """
    # lazy scipy.stats (~1 s): report and compare import unveil.metrics but never use it
    from scipy.stats import wasserstein_distance

    r = np.asarray(real_hu_values, dtype=np.float64).ravel()
    f = np.asarray(fake_hu_values, dtype=np.float64).ravel()
    if r.size == 0 or f.size == 0:
        raise ValueError("region_wasserstein needs a non-empty set of values on both sides")
    return float(wasserstein_distance(r, f))


def histogram_distances(
    real_vols: Sequence[np.ndarray],
    fake_vols: Sequence[np.ndarray],
    region_masks: Sequence[Mapping[str, np.ndarray]],
    fake_region_masks: Sequence[Mapping[str, np.ndarray]] | None = None,
    hu_window: tuple[float, float] | None = None,
) -> dict[str, float | None]:
    """Per-region Wasserstein distance (HU) between the voxel values of two sets of CTs.

    Args:
        real_vols: ``(X, Y, Z)`` HU volumes of the real set.
        fake_vols: ``(X, Y, Z)`` HU volumes of the generated set (any number).
        region_masks: one mapping region name -> ``(X, Y, Z)`` mask per real volume
            (e.g. from :mod:`unveil.data.regions`).
        fake_region_masks: the same per generated volume; ``None`` reuses
            ``region_masks`` (the generated CTs were made from the real subjects' masks,
            so ``fake_vols[i]`` is on the grid of ``real_vols[i]``).
        hu_window: clip both sets to this window first (e.g. the generator's window);
            ``None`` compares raw HU.

    Returns:
        ``{region: distance}`` for every region named in the first real mapping; a region
        empty on either side is ``None``.
    """
    if len(real_vols) != len(region_masks):
        raise ValueError(f"{len(real_vols)} real volumes but {len(region_masks)} mask sets")
    if fake_region_masks is None:
        if len(fake_vols) != len(real_vols):
            raise ValueError(
                "fake_region_masks is needed when the sets differ in size "
                f"({len(real_vols)} real, {len(fake_vols)} generated)"
            )
        fake_region_masks = region_masks
    if len(fake_vols) != len(fake_region_masks):
        raise ValueError(f"{len(fake_vols)} fake volumes but {len(fake_region_masks)} mask sets")
    regions = list(region_masks[0]) if region_masks else []
    out: dict[str, float | None] = {}
    for region in regions:
        r = _pool_region(real_vols, region_masks, region, hu_window)
        f = _pool_region(fake_vols, fake_region_masks, region, hu_window)
        out[region] = region_wasserstein(r, f) if r.size and f.size else None
    return out


# --------------------------------------------------------------------------- helpers


def _features(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be (N, F) with N >= 2, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix via ``eigh`` (negative round-off clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _pool_region(
    vols: Sequence[np.ndarray],
    masks: Sequence[Mapping[str, np.ndarray]],
    region: str,
    hu_window: tuple[float, float] | None,
) -> np.ndarray:
    parts = []
    for vol, mset in zip(vols, masks, strict=True):
        if region not in mset:
            raise ValueError(f"region '{region}' is missing from one of the mask sets")
        vol = np.asarray(vol)
        m = np.asarray(mset[region]) != 0
        if m.shape != vol.shape:
            raise ValueError(f"mask of '{region}' has shape {m.shape}, volume {vol.shape}")
        parts.append(vol[m].astype(np.float64))
    values = np.concatenate(parts) if parts else np.empty(0)
    if hu_window is not None:
        values = np.clip(values, float(hu_window[0]), float(hu_window[1]))
    return values
