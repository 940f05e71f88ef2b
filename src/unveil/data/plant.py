"""Semi-synthetic cohorts from real scans with planted effects (``unveil plant``).

The positive control a user runs on their own scans before trusting a pattern: from one or
more real CTs with lung masks, build ``n`` pseudo-patients, each a randomly cropped,
possibly left-right flipped and slightly deformed copy of a source scan (the mask goes
through exactly the same transform), give each pseudo-patient attributes drawn from a spec,
and add the spec's effects exactly inside the mask regions.  The ground truth goes to
``effects.json`` and ``truth.csv``; a tool that is to be trusted must find those effects
(size, sign, place) and nothing for the null attributes.

Per pseudo-patient, in order:

1. optional resampling of the source to ``spacing`` mm (MONAI ``Spacing``, bilinear for the
   image, nearest for the mask; done once per source);
2. a random crop: each axis keeps a random fraction in [0.8, 0.95] of its length (or
   ``crop`` voxels) at a random offset, redrawn until the crop holds lung voxels; the affine
   is shifted so the crop stays where it was in world space;
3. with probability 1/2 a left-right mirror: the array is flipped along the axis that points
   most along world x *and the affine is kept*, so the anatomy is mirrored in world space;
   the right and left lung labels are then swapped so that the right-lung label still marks
   the lung on the subject's right (positive RAS x), as in every unmirrored scan;
4. a small smooth deformation: MONAI ``Rand3DElasticd`` (elastic field with sigma 6-9
   voxels and magnitude 100-250, i.e. about 0.5-1.5 voxel rms, plus rotations up to 0.05
   rad and scaling up to 5%) applied with the same random parameters to the image
   (bilinear) and the mask (nearest), seeded from the injected generator;
5. attributes drawn from the spec, then :func:`unveil.data.effects.apply_effects` on the
   transformed image and mask (regions from :mod:`unveil.data.regions`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from unveil.config import DataConfig, PreprocessConfig
from unveil.csvsafe import neutralise_frame
from unveil.data.effects import (
    PlantSpec,
    apply_effects,
    draw_attributes,
    effects_record,
    load_spec,
    write_effects_json,
)
from unveil.data.io import Volume, read_volume, volume_stem, volume_suffix, write_volume
from unveil.errors import DataError, UnveilError
from unveil.fs import atomic_dir, write_text

#: Range of the fraction of each axis kept by a random crop.
CROP_FRACTION = (0.8, 0.95)
#: Rand3DElastic settings (voxels): smoothing sigma and magnitude of the elastic field.
ELASTIC_SIGMA = (6.0, 9.0)
ELASTIC_MAGNITUDE = (100.0, 250.0)
#: Largest rotation (radians) and relative scaling of the random affine part.
ROTATE_MAX = 0.05
SCALE_MAX = 0.05
#: How many crops are tried before giving up on finding lung voxels.
CROP_TRIES = 20


@dataclass
class Source:
    """One real scan with its mask (paths; volumes are loaded on demand)."""

    id: str
    image: Path
    mask: Path


def find_sources(root: str | os.PathLike) -> list[Source]:
    """Pair ``images/<id>.*`` with ``masks/<id>.*`` in a cohort folder.

    A DICOM series folder under ``images/`` counts as an image.  Raises :class:`DataError`
    (one sentence) when the folders are missing, empty, or an image has no mask.
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        raise DataError(
            f"{root} has no images/ folder; a cohort holds images/<id>.nii.gz and "
            "masks/<id>.nii.gz."
        )
    images = sorted(
        p
        for p in img_dir.iterdir()
        if not p.name.startswith(".") and (volume_suffix(p) or p.is_dir())
    )
    if not images:
        raise DataError(
            f"{img_dir} holds no volumes; put the source scans there as images/<id>.nii.gz."
        )
    masks: dict[str, Path] = {}
    if mask_dir.is_dir():
        for p in mask_dir.iterdir():
            if not p.name.startswith(".") and (volume_suffix(p) or p.is_dir()):
                masks[volume_stem(p)] = p
    out = []
    for p in images:
        sid = volume_stem(p)
        if sid not in masks:
            raise DataError(
                f"source scan {p} has no mask masks/{sid}.<ext> in {root}; unveil plant needs "
                "a lung mask per scan (make one with unveil lungmask)."
            )
        out.append(Source(sid, p, masks[sid]))
    return out


def _lung_values(cfg: DataConfig) -> list[int]:
    return [cfg.labels[n] for n in cfg.lung_labels]


def _right_left_values(cfg: DataConfig) -> tuple[int, int] | None:
    if "right_lung" in cfg.labels and "left_lung" in cfg.labels:
        return cfg.labels["right_lung"], cfg.labels["left_lung"]
    vals = _lung_values(cfg)
    return (vals[0], vals[1]) if len(vals) == 2 else None


def load_source(
    src: Source, data_cfg: DataConfig, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a source: ``(image HU float32 (X, Y, Z), labels int (X, Y, Z), affine (4, 4))``.

    Checks that image and mask share a grid and that the mask has lung voxels; resamples
    both to ``spacing`` mm when given.
    """
    image = read_volume(src.image, dtype=np.float32)
    mask = read_volume(src.mask)
    if not image.same_grid(mask, atol=1e-2):
        raise DataError(
            f"mask {src.mask} is not on the grid of {src.image} (shape {mask.shape} vs "
            f"{image.shape}); resample the mask onto its image."
        )
    labels = np.rint(mask.array).astype(np.int16)
    if not np.isin(labels, _lung_values(data_cfg)).any():
        raise DataError(
            f"mask {src.mask} has no lung voxels (labels {_lung_values(data_cfg)}); check the "
            "mask or set data.labels to its lung label values."
        )
    img, lab, affine = image.array, labels, image.affine
    if spacing is not None:
        img, lab, affine = resample(img, lab, affine, spacing)
    return img, lab, affine


def resample(
    image: np.ndarray, labels: np.ndarray, affine: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample image (bilinear) and labels (nearest) to ``spacing`` mm with MONAI ``Spacing``.

    Shapes ``(X, Y, Z)`` in, ``(X', Y', Z')`` out, with the new affine.
    """
    # lazy (torch and MONAI, ~5 s): a bad spec or table is refused before they load.
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    aff = torch.as_tensor(affine, dtype=torch.float64)
    sp = Spacing(pixdim=tuple(float(s) for s in spacing), padding_mode="border")
    img_t = sp(
        MetaTensor(torch.as_tensor(image[None], dtype=torch.float32), affine=aff), mode="bilinear"
    )
    lab_t = sp(
        MetaTensor(torch.as_tensor(labels[None], dtype=torch.float32), affine=aff), mode="nearest"
    )
    new_affine = np.asarray(img_t.affine, dtype=np.float64)
    return (
        np.asarray(img_t[0], dtype=np.float32),
        np.rint(np.asarray(lab_t[0])).astype(labels.dtype),
        new_affine,
    )


def lr_axis(affine: np.ndarray) -> int:
    """The array axis whose direction is closest to world x (left-right)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    direction = a / np.sqrt((a**2).sum(axis=0))
    return int(np.argmax(np.abs(direction[0])))


def flip_lr(
    image: np.ndarray, labels: np.ndarray, affine: np.ndarray, data_cfg: DataConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a scan left-right in world space, keeping the right-lung label on the right.

    The arrays are flipped along :func:`lr_axis` and the affine is kept (so the anatomy is
    mirrored in world space); the right and left lung label values are then swapped, so
    the lung now lying at positive RAS x carries the right-lung label.

    Returns ``(image, labels)``, shapes ``(X, Y, Z)`` as given.
    """
    cfg = data_cfg or DataConfig()
    axis = lr_axis(affine)
    img = np.flip(image, axis=axis).copy()
    lab = np.flip(labels, axis=axis).copy()
    rl = _right_left_values(cfg)
    if rl is not None:
        right, left = rl
        was_right, was_left = lab == right, lab == left
        lab[was_right], lab[was_left] = left, right
    return img, lab


def random_crop(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    lung_values: Sequence[int],
    crop: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """A random box holding lung voxels: ``(image, labels, affine, start, size)``.

    The affine is translated so every kept voxel stays at its world position.
    """
    shape = np.array(image.shape)
    for _ in range(CROP_TRIES):
        if crop is None:
            frac = rng.uniform(*CROP_FRACTION, size=3)
            size = np.maximum(np.rint(frac * shape).astype(int), 1)
        else:
            size = np.minimum(np.asarray(crop, dtype=int), shape)
        start = np.array(
            [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, size, strict=True)]
        )
        box = tuple(slice(int(a), int(a + c)) for a, c in zip(start, size, strict=True))
        lab = labels[box]
        if np.isin(lab, lung_values).any():
            new_affine = np.asarray(affine, dtype=np.float64).copy()
            new_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
            return image[box].copy(), lab.copy(), new_affine, start.tolist(), size.tolist()
    raise DataError(
        f"no crop of size {size.tolist()} out of {shape.tolist()} voxels held lung voxels after "
        f"{CROP_TRIES} tries; use a larger --crop or check the masks."
    )


def deform(image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small smooth deformation with MONAI ``Rand3DElasticd``, identical for image and mask.

    Image bilinear, mask nearest, border padding; shapes ``(X, Y, Z)`` kept; the grid (and
    so the affine) is unchanged, the content moves.
    """
    # lazy (torch and MONAI, ~5 s): a bad spec or table is refused before they load.
    import torch
    from monai.transforms import Rand3DElasticd

    t = Rand3DElasticd(
        keys=("image", "label"),
        sigma_range=ELASTIC_SIGMA,
        magnitude_range=ELASTIC_MAGNITUDE,
        prob=1.0,
        rotate_range=(ROTATE_MAX,) * 3,
        scale_range=(SCALE_MAX,) * 3,
        mode=("bilinear", "nearest"),
        padding_mode=("border", "border"),
    )
    t.set_random_state(seed=seed)
    out = t(
        {
            "image": torch.as_tensor(image[None], dtype=torch.float32),
            "label": torch.as_tensor(labels[None], dtype=torch.float32),
        }
    )
    img = np.asarray(out["image"][0], dtype=np.float32)
    lab = np.rint(np.asarray(out["label"][0])).astype(labels.dtype)
    return img, lab


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    data_cfg: DataConfig | None = None,
    crop: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Crop, maybe mirror, and deform one source: ``(image, labels, affine, info)``.

    ``info`` records what was done (crop start/size, flipped, deformation seed).
    """
    cfg = data_cfg or DataConfig()
    img, lab, aff, start, size = random_crop(image, labels, affine, rng, _lung_values(cfg), crop)
    flipped = bool(rng.random() < 0.5)
    if flipped:
        img, lab = flip_lr(img, lab, aff, cfg)
    deform_seed = int(rng.integers(0, 2**31 - 1))
    img, lab = deform(img, lab, deform_seed)
    info = {"crop_start": start, "crop_size": size, "flipped": flipped, "deform_seed": deform_seed}
    return img, lab, aff, info


def _spacing_arg(spacing: float | Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    vals = [float(spacing)] if np.isscalar(spacing) else [float(s) for s in spacing]  # type: ignore[arg-type]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or any(v <= 0 for v in vals):
        raise UnveilError(
            f"--spacing {vals} is not usable; give one or three positive millimetre values."
        )
    return tuple(vals)  # type: ignore[return-value]


def _crop_arg(crop: int | Sequence[int] | None) -> list[int] | None:
    if crop is None:
        return None
    vals = [int(crop)] * 3 if np.isscalar(crop) else [int(c) for c in crop]  # type: ignore[arg-type]
    if len(vals) != 3 or any(v < 1 for v in vals):
        raise UnveilError(f"--crop {vals} is not usable; give one or three positive voxel counts.")
    return vals


class _SourceCache:
    """The last few sources loaded (real scans are tens of MB each), by index."""

    def __init__(
        self,
        sources: list[Source],
        cfg: DataConfig,
        spacing: tuple[float, float, float] | None,
        size: int = 4,
    ):
        self.sources, self.cfg, self.spacing, self.size = sources, cfg, spacing, size
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._order: list[int] = []

    def get(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, labels, affine)`` of source ``idx``, loaded when not kept."""
        if idx not in self._cache:
            self._cache[idx] = load_source(self.sources[idx], self.cfg, self.spacing)
            self._order.append(idx)
            if len(self._order) > self.size:
                self._cache.pop(self._order.pop(0))
        return self._cache[idx]


def plant_cohort(
    source_root: str | os.PathLike,
    spec_path: str | os.PathLike | PlantSpec,
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    crop: int | Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    overwrite: bool = False,
    data_cfg: DataConfig | None = None,
    progress: bool = False,
) -> Path:
    """Build a semi-synthetic cohort of ``n`` pseudo-patients in ``out`` and return its path.

    Args:
        source_root: a cohort with ``images/`` and ``masks/`` (label values per ``data_cfg``).
        spec_path: the YAML spec (see ``docs/plant.md``) or an already parsed :class:`PlantSpec`.
        out: output folder; written atomically (complete or absent).
        n: number of pseudo-patients (at least 1).
        seed: seeds everything; pseudo-patient ``k`` depends only on ``seed`` and ``k``.
        crop: crop size in voxels (one or three numbers) instead of random fractions.
        spacing: resample sources to this spacing (mm, one or three numbers) first.
        overwrite: replace a non-empty ``out``.
        data_cfg: label meaning (default :class:`DataConfig`).
        progress: show a tqdm bar over pseudo-patients.

    Writes ``images/sub-XXX.nii.gz`` (float32 HU), ``masks/sub-XXX.nii.gz``,
    ``clinical.csv`` (observed; ``missing`` fractions applied), ``truth.csv`` (true values),
    ``provenance.csv`` (source and transform per pseudo-patient) and ``effects.json``.
    """
    cfg = data_cfg or DataConfig()
    spec = spec_path if isinstance(spec_path, PlantSpec) else load_spec(spec_path)
    if n < 1:
        raise UnveilError(f"--n {n} is too small; build at least one pseudo-patient.")
    sp = _spacing_arg(spacing)
    crop_v = _crop_arg(crop)
    sources = find_sources(source_root)
    cache = _SourceCache(sources, cfg, sp)
    # Check every source up front, so a bad mask fails before minutes of work.
    for i in range(len(sources)):
        cache.get(i)

    names = list(spec.attributes)
    rows_true, rows_obs, rows_prov = [], [], []
    children = np.random.SeedSequence(seed).spawn(n)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for k in tqdm(range(n), desc="plant", unit="subject", disable=not progress):
            true, observed, prov = _plant_one(k, children[k], spec, cache, crop_v, tmp)
            rows_true.append(true)
            rows_obs.append(observed)
            rows_prov.append(prov)
        _write_tables(tmp, names, rows_obs, rows_true, rows_prov)
        record = effects_record(
            spec.effects,
            names,
            generator="unveil plant",
            n=n,
            seed=seed,
            sources=[s.id for s in sources],
            crop=crop_v,
            spacing_mm=list(sp) if sp else None,
            hu_window=list(PreprocessConfig().hu_window),
            labels=dict(cfg.labels),
            spec=spec.model_dump(mode="json"),
            transforms=_TRANSFORMS,
            truth_file="truth.csv",
            clinical_file="clinical.csv",
        )
        write_effects_json(tmp / "effects.json", record)
    return out


#: How every pseudo-patient was transformed, in words (``effects.json``).
_TRANSFORMS = (
    f"random crop (fraction {CROP_FRACTION[0]}-{CROP_FRACTION[1]} per axis, or "
    "crop voxels), left-right mirror with p=0.5 (array flipped, affine kept, right/"
    "left lung labels swapped), MONAI Rand3DElasticd (sigma "
    f"{ELASTIC_SIGMA}, magnitude {ELASTIC_MAGNITUDE}, rotation <= {ROTATE_MAX} rad, "
    f"scale <= {SCALE_MAX}); effects planted after the transforms"
)


def _plant_one(
    k: int,
    child: np.random.SeedSequence,
    spec: PlantSpec,
    cache: _SourceCache,
    crop_v: list[int] | None,
    tmp: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Write pseudo-patient ``k``'s image and mask; return its true, observed, provenance rows."""
    cfg = cache.cfg
    attr_rng, aug_rng = (np.random.default_rng(s) for s in child.spawn(2))
    sid = f"sub-{k:03d}"
    true, observed = draw_attributes(spec.attributes, attr_rng)
    src_idx = int(aug_rng.integers(len(cache.sources)))
    image, labels, affine = cache.get(src_idx)
    img, lab, aff, info = augment(image, labels, affine, aug_rng, cfg, crop_v)
    planted = apply_effects(img, lab, aff, spec.effects, true, cfg)
    write_volume(Volume(planted, aff), tmp / "images" / f"{sid}.nii.gz")
    lab_dtype = (
        np.uint8 if int(lab.max(initial=0)) < 256 and int(lab.min(initial=0)) >= 0 else np.int16
    )
    write_volume(Volume(lab.astype(lab_dtype), aff), tmp / "masks" / f"{sid}.nii.gz")
    prov = {
        "id": sid,
        "source": cache.sources[src_idx].id,
        "crop_start": " ".join(str(v) for v in info["crop_start"]),
        "crop_size": " ".join(str(v) for v in info["crop_size"]),
        "flipped": info["flipped"],
        "deform_seed": info["deform_seed"],
    }
    return {"id": sid, **true}, {"id": sid, **observed}, prov


def _write_tables(
    tmp: Path,
    names: list[str],
    rows_obs: list[dict[str, Any]],
    rows_true: list[dict[str, Any]],
    rows_prov: list[dict[str, Any]],
) -> None:
    """Write ``clinical.csv`` (observed), ``truth.csv`` and ``provenance.csv`` into ``tmp``.

    Level names come from the spec and source ids from file names: a text cell a
    spreadsheet would run as a formula is written '=x (unveil.csvsafe), which
    read_clinical_table restores; the raw source ids stay in effects.json.
    """
    cols = ["id", *names]
    for fname, rows in (("clinical.csv", rows_obs), ("truth.csv", rows_true)):
        write_text(
            tmp / fname,
            neutralise_frame(pd.DataFrame(rows, columns=cols)).to_csv(
                index=False, lineterminator="\n"
            ),
        )
    write_text(
        tmp / "provenance.csv",
        neutralise_frame(pd.DataFrame(rows_prov)).to_csv(index=False, lineterminator="\n"),
    )
