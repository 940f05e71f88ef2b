"""Evaluation metrics: fidelity, realism, mask consistency, with intervals over subjects.

The building blocks of ``unveil evaluate`` / ``unveil compare``; each is a plain function
on numpy arrays in HU, returning floats or dicts of floats that go straight into JSON.

- :mod:`~unveil.metrics.paired`: a generated CT against the real scan of the same
  subject: :func:`paired_fidelity` (MAE in HU, PSNR, 3D SSIM overall / inside / outside the
  lung, MS-SSIM when the volume is large enough), :func:`dice` and
  :func:`mask_consistency` (``unveil lungmask`` on the generated CT against the input
  mask), :func:`body_mask`.
- :mod:`~unveil.metrics.distribution`: :func:`fid`, :func:`kid` on feature matrices;
  :func:`region_wasserstein`, :func:`histogram_distances` on HU (weight-free).
- :mod:`~unveil.metrics.features`: :func:`slices_for_fid` (fixed HU window, one slice
  replicated to three channels), :func:`volumes_for_fid`, :func:`load_feature_network`
  (a user-named TorchScript file; one sentence when none is given),
  :class:`RandomProjectionFeatures` (tests only, not perceptual).
- :mod:`~unveil.metrics.texture`: :func:`texture_stats` (HU moments and percentiles,
  LAA-950 %, HAA %, GLCM contrast / homogeneity) and :func:`texture_distance`.
- :mod:`~unveil.metrics.intervals`: :func:`mean_ci`, :func:`median_ci`,
  :func:`summarize` (bootstrap over subjects; rules for ``None`` / ``inf``),
  :func:`subject_bootstrap` (interval of a set-level figure such as FID by resampling
  subjects).

A typical evaluation of one model on a test split::

    records = [paired_fidelity(real, fake, lung, window, body_mask=body_mask(real))
               | mask_consistency(lungmask(fake_vol).array, labels, {"lung": (1, 2)})
               for real, fake, lung, labels, fake_vol in subjects]
    table = summarize(records, rng, statistic={"psnr": "median", "psnr_lung": "median",
                                               "psnr_outside": "median"})
    hist = histogram_distances(reals, fakes, region_masks)        # weight-free, always
    tex = [texture_distance(texture_stats_regions(r, m), texture_stats_regions(f, m)) ...]
    net = load_feature_network(path, "2d")                        # UnveilError if None
    fa = net.extract_2d(np.concatenate([slices_for_fid(v, window, size=299) for v in reals]))
    fb = net.extract_2d(np.concatenate([slices_for_fid(v, window, size=299) for v in fakes]))
    fid(fa, fb), kid(fa, fb, rng=rng)
    # interval over subjects: per-subject feature groups, resampled together
    subject_bootstrap(groups_real, groups_fake, fid, rng)
"""

from unveil.metrics.distribution import (
    draw_subsets,
    fid,
    histogram_distances,
    kid,
    region_wasserstein,
)
from unveil.metrics.features import (
    FeatureExtractor,
    RandomProjectionFeatures,
    TorchScriptFeatures,
    load_feature_network,
    missing_network_message,
    slices_for_fid,
    volumes_for_fid,
)
from unveil.metrics.intervals import mean_ci, median_ci, subject_bootstrap, summarize
from unveil.metrics.paired import (
    body_mask,
    dice,
    mask_consistency,
    ms_ssim_min_size,
    paired_fidelity,
    window01,
)
from unveil.metrics.texture import texture_distance, texture_stats, texture_stats_regions

__all__ = [
    "FeatureExtractor",
    "RandomProjectionFeatures",
    "TorchScriptFeatures",
    "body_mask",
    "dice",
    "draw_subsets",
    "fid",
    "histogram_distances",
    "kid",
    "load_feature_network",
    "mask_consistency",
    "mean_ci",
    "median_ci",
    "missing_network_message",
    "ms_ssim_min_size",
    "paired_fidelity",
    "region_wasserstein",
    "slices_for_fid",
    "subject_bootstrap",
    "summarize",
    "texture_distance",
    "texture_stats",
    "texture_stats_regions",
    "volumes_for_fid",
    "window01",
]
