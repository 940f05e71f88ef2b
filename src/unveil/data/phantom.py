"""A synthetic chest-CT cohort with planted, exactly known effects (``unveil phantom``).

Each subject is a ``size^3`` volume in HU over a 350 mm field of view (isotropic spacing
``350 / size`` mm, array axes pointing R, A, S, centred on the origin) with a label map on
the same grid (0 background, 1 right lung, 2 left lung, 3 airway; the right lung lies at
positive RAS ``x``).  Anatomy: an elliptical body with subcutaneous fat (-100 HU) and
muscle (+40), a spine, sternum and ribs (bone +400..+800), mediastinum and heart (+40), two
lungs (parenchyma about -870 HU, denser posteriorly, with vessel-like strands that are
brighter near the hilum), trachea and main bronchi (-1000), partial-volume blur and
slightly correlated noise (:data:`NOISE_STD_HU`).  Lung size, body size, heart size,
diaphragm height and position vary per subject.

The clinical table (:func:`phantom_table`) has age, sex, smoking (never / former /
current), pack-years, diagnosis (none / IPF / CTD-ILD) and ``blood_group`` (the negative
control: it has no effect), with realistic dependence (smokers are older, IPF is likelier in
older smokers) so an observed association can differ from the planted causal effect, and
about 15% of the attribute cells missing.  The images carry the effects of every subject's
*true* attributes (written to ``truth.csv``); missingness only hides values from
``clinical.csv``.

Effects (:func:`default_effects`, written to ``effects.json``) are added after the noise,
exactly inside regions of :mod:`unveil.data.regions`, so the difference between two
attribute settings of one subject is exactly the sum of the shifts.

Randomness: one :class:`numpy.random.SeedSequence` from ``seed``; subject ``k`` gets the
``k``-th spawned child, split into an attribute, a missingness and an anatomy generator, so
subject ``k`` is the same whatever ``n``.  The same seed gives byte-identical files (nibabel
writes gzip with no timestamp).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unveil.config import DataConfig, PreprocessConfig
from unveil.data.effects import EffectSpec, apply_effects, effects_record, write_effects_json
from unveil.data.io import Volume, write_volume
from unveil.errors import UnveilError
from unveil.fs import atomic_dir, write_text

#: Field of view (mm) along each axis.
FOV_MM = 350.0
#: Standard deviation of the added noise (HU) after its slight spatial correlation.
NOISE_STD_HU = 20.0
#: Gaussian sigma (voxels) that correlates the noise.
NOISE_SIGMA_VOX = 0.7
#: Gaussian sigma (voxels) of the partial-volume blur applied before the noise.
BLUR_SIGMA_VOX = 0.5
#: Nominal tissue values (HU).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "mediastinum": 40.0,
    "bone_cancellous": 400.0,
    "bone_cortical": 800.0,
    "spinal_canal": 10.0,
    "lung_parenchyma": -880.0,
    "airway_lumen": -1000.0,
}
#: Clinical attribute columns, in table order (after ``id``).
PHANTOM_COLUMNS: tuple[str, ...] = (
    "age",
    "sex",
    "smoking",
    "pack_years",
    "diagnosis",
    "blood_group",
)
#: The attribute with no effect at all (negative control).
NULL_ATTRIBUTE = "blood_group"
#: Fraction of attribute cells left empty in clinical.csv.
MISSING_FRACTION = 0.15
#: Label values written to the masks (those of :class:`DataConfig`'s defaults).
LABELS: dict[str, int] = {"right_lung": 1, "left_lung": 2, "airway": 3}


def default_effects() -> list[EffectSpec]:
    """The planted effects of the phantom (sizes chosen well above the 20 HU noise)."""
    return [
        EffectSpec(attribute="smoking", value="current", region="upper_lung", shift_hu=-60.0),
        EffectSpec(attribute="smoking", value="former", region="upper_lung", shift_hu=-20.0),
        EffectSpec(attribute="pack_years", per_unit=-0.5, region="upper_lung"),
        EffectSpec(attribute="age", per_unit=1.0, reference=60.0, region="lung"),
        EffectSpec(
            attribute="diagnosis", value="IPF", region="lower_lung&lung_periphery", shift_hu=120.0
        ),
        EffectSpec(
            attribute="diagnosis",
            value="CTD-ILD",
            region="lower_lung&lung_periphery",
            shift_hu=60.0,
        ),
    ]


# ------------------------------------------------------------------------------ randomness


def subject_generators(seed: int, n: int) -> list[tuple[np.random.Generator, ...]]:
    """Per subject ``(attributes, missingness, anatomy)`` generators.

    Subject ``k``'s generators come from the ``k``-th child of ``SeedSequence(seed)``, so
    they do not depend on ``n``.
    """
    children = np.random.SeedSequence(seed).spawn(n)
    return [tuple(np.random.default_rng(s) for s in child.spawn(3)) for child in children]


# --------------------------------------------------------------------------- clinical table


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def phantom_attributes(rng: np.random.Generator) -> dict[str, Any]:
    """One subject's true (complete) attributes.

    Smoking is drawn first; age depends on it (never ~ 52, former ~ 66, current ~ 60 years),
    pack-years grow with the years smoked, IPF is likelier with age and ever-smoking,
    CTD-ILD likelier in women; sex and blood group are independent of everything.
    """
    smoking = str(rng.choice(["never", "former", "current"], p=[0.5, 0.3, 0.2]))
    mean, sd = {"never": (52.0, 11.0), "former": (66.0, 8.0), "current": (60.0, 9.0)}[smoking]
    age = round(float(np.clip(rng.normal(mean, sd), 25.0, 90.0)), 1)
    sex = str(rng.choice(["F", "M"]))
    packs_per_day = rng.uniform(0.5, 1.5)
    start_age = float(np.clip(rng.normal(18.0, 3.0), 12.0, 30.0))
    quit_fraction = rng.uniform(0.3, 0.8)
    years = max(age - start_age, 0.0) * (quit_fraction if smoking == "former" else 1.0)
    pack_years = 0.0 if smoking == "never" else round(float(packs_per_day * years), 1)
    p_ipf = _sigmoid(-2.2 + 0.07 * (age - 60.0) + 0.9 * (smoking != "never"))
    p_ctd = 0.18 if sex == "F" else 0.08
    u = rng.random()
    diagnosis = "IPF" if u < p_ipf else ("CTD-ILD" if u < p_ipf + p_ctd else "none")
    blood_group = str(rng.choice(["A", "B", "AB", "O"], p=[0.40, 0.11, 0.04, 0.45]))
    return {
        "age": age,
        "sex": sex,
        "smoking": smoking,
        "pack_years": pack_years,
        "diagnosis": diagnosis,
        "blood_group": blood_group,
    }


def _subject_id(k: int) -> str:
    return f"sub-{k:03d}"


def phantom_table(n: int, seed: int = 0, missing_fraction: float = MISSING_FRACTION):
    """The phantom's clinical tables without rendering any image.

    Returns:
        ``(truth, clinical)`` pandas DataFrames with columns ``id`` and
        :data:`PHANTOM_COLUMNS`; ``clinical`` has each attribute cell independently missing
        (NaN) with probability ``missing_fraction`` (never the id).
    """
    import pandas as pd

    rows_true, rows_obs = [], []
    for k, (attr_rng, miss_rng, _) in enumerate(subject_generators(seed, n)):
        attrs = phantom_attributes(attr_rng)
        hide = miss_rng.random(len(PHANTOM_COLUMNS)) < missing_fraction
        rows_true.append({"id": _subject_id(k), **attrs})
        rows_obs.append(
            {
                "id": _subject_id(k),
                **{
                    c: (None if h else attrs[c]) for c, h in zip(PHANTOM_COLUMNS, hide, strict=True)
                },
            }
        )
    cols = ["id", *PHANTOM_COLUMNS]
    return pd.DataFrame(rows_true, columns=cols), pd.DataFrame(rows_obs, columns=cols)


def _table_csv(df) -> str:
    # One decimal for age and pack-years; a missing cell is empty (how the prompt builder
    # expects "not recorded").
    return df.to_csv(index=False, float_format="%.1f", na_rep="", lineterminator="\n")


# ------------------------------------------------------------------------------- anatomy


def phantom_affine(size: int) -> np.ndarray:
    """``(4, 4)`` RAS affine of a ``size^3`` phantom: isotropic ``FOV_MM / size`` mm, centred."""
    s = FOV_MM / size
    affine = np.diag([s, s, s, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * s
    return affine


def _segment_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, a: Sequence[float], b: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from every voxel centre to the segment a-b (broadcast to the grid)."""
    ab = np.subtract(b, a, dtype=np.float64)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / float(ab @ ab), 0.0, 1.0)
    return np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)


def _unit_noise_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian white noise smoothed with ``sigma`` voxels and rescaled to unit std.

    The scale is the exact one of the filter (norm of its impulse response), not the
    sample std, so the noise level does not depend on the draw.
    """
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    if sigma <= 0:
        return field
    half = int(math.ceil(4 * sigma)) + 1
    delta = np.zeros((2 * half + 1,) * len(shape))
    delta[(half,) * len(shape)] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma, mode="constant")
    return field / float(np.sqrt((kernel**2).sum()))


def render_anatomy(rng: np.random.Generator, size: int = 64) -> tuple[Volume, Volume]:
    """Draw one subject's anatomy: ``(image HU float32 (S, S, S), labels uint8 (S, S, S))``.

    No effect is applied.  The number of random draws does not depend on anything but
    ``size``, so two renders from equal generators are identical.
    """
    from scipy import ndimage

    s = FOV_MM / size
    affine = phantom_affine(size)
    c = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * s
    x, y, z = c[:, None, None], c[None, :, None], c[None, None, :]
    shape = (size, size, size)

    # Per-subject variation (all draws up front, fixed count).
    body_scale = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    lung_scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    heart_scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    sx, sy, sz = np.clip(rng.normal(0.0, 4.0, size=3), -8.0, 8.0)
    diaphragm = float(np.clip(rng.normal(0.0, 8.0), -16.0, 16.0))
    lung_offset = float(np.clip(rng.normal(0.0, 8.0), -20.0, 20.0))
    vessel_f1 = _unit_noise_field(rng, shape, 6.0 / s)
    vessel_f2 = _unit_noise_field(rng, shape, 6.0 / s)
    noise = _unit_noise_field(rng, shape, NOISE_SIGMA_VOX) * NOISE_STD_HU

    xs, ys = x - sx, y - sy
    # Body, fat, muscle and the thoracic cavity: nested ellipses in the axial plane.
    ax, ay = 150.0 * body_scale, 110.0 * body_scale
    fat_t, muscle_t = 15.0 * body_scale, 12.0
    cav_ax, cav_ay = ax - fat_t - muscle_t, ay - fat_t - muscle_t
    r_body = (xs / ax) ** 2 + (ys / ay) ** 2
    r_fat = (xs / (ax - fat_t)) ** 2 + (ys / (ay - fat_t)) ** 2
    r_cav = (xs / cav_ax) ** 2 + (ys / cav_ay) ** 2
    body = np.broadcast_to(r_body <= 1.0, shape)
    muscle = np.broadcast_to(r_fat <= 1.0, shape)
    cavity = np.broadcast_to(r_cav <= 1.0, shape)

    hu = np.full(shape, TISSUE_HU["air"])
    hu[body] = TISSUE_HU["fat"]
    hu[muscle] = TISSUE_HU["muscle"]
    hu[cavity] = TISSUE_HU["mediastinum"]

    # Lungs: two ellipsoids inside the cavity, floors raised by a diaphragm dome (higher on
    # the right, over the liver), the heart (left of the midline, anterior, inferior) carved out.
    lx, ly, lz = 0.42 * cav_ax * lung_scale, 0.85 * cav_ay * lung_scale, 125.0 * lung_scale
    lcx = cav_ax - lx - 6.0
    lcy, lcz = -3.0, -10.0 + sz
    heart_c = (sx - 20.0, sy + 25.0, lcz - 0.45 * lz)
    heart_r = (55.0 * heart_scale, 45.0 * heart_scale, 50.0 * heart_scale)
    # The heart has the mediastinum's +40 HU (no contrast), so only the lungs need its
    # shape: they keep 5 mm (pericardium, fat) away from it.
    heart_margin = (
        ((x - heart_c[0]) / (heart_r[0] + 5.0)) ** 2
        + ((y - heart_c[1]) / (heart_r[1] + 5.0)) ** 2
        + ((z - heart_c[2]) / (heart_r[2] + 5.0)) ** 2
    ) <= 1.0
    inner_cav = ((xs / (cav_ax - 3.0)) ** 2 + (ys / (cav_ay - 3.0)) ** 2) <= 1.0

    spine_c = (sx, sy - cav_ay + 22.0)
    r_spine = np.sqrt((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2)
    canal_c = (sx, spine_c[1] - 26.0)
    r_canal = np.sqrt((x - canal_c[0]) ** 2 + (y - canal_c[1]) ** 2)

    lungs = []
    for side in (+1.0, -1.0):  # +x is the subject's right in RAS
        cx = sx + side * lcx
        u2 = ((x - cx) / lx) ** 2 + ((y - sy - lcy) / ly) ** 2
        ellipsoid = u2 + ((z - lcz) / lz) ** 2 <= 1.0
        dome = 25.0 * np.clip(1.0 - u2, 0.0, 1.0) + (12.0 if side > 0 else 0.0) + diaphragm
        floor = z >= lcz - 0.8 * lz + dome
        lung = ellipsoid & floor & inner_cav & ~heart_margin & (r_spine > 24.0) & (r_canal > 22.0)
        lungs.append(np.broadcast_to(lung, shape).copy())
    right_lung, left_lung = lungs
    left_lung &= ~right_lung

    # Airway: trachea from the top of the field down to the carina, then two main bronchi
    # (the right one shorter and steeper).  Radii never fall below ~0.8 voxel so the
    # airway survives coarse grids.
    tr = (sx, spine_c[1] + 32.0)
    carina_z = lcz + 0.25 * lz
    r_tr, r_br = max(8.0, 0.8 * s), max(5.5, 0.8 * s)
    top = (tr[0], tr[1], float(c[-1]) + s)
    carina = (tr[0], tr[1], carina_z)
    hilum_r = (sx + 0.45 * lcx + 10.0, tr[1] + 6.0, carina_z - 30.0)
    hilum_l = (sx - 0.45 * lcx - 15.0, tr[1] + 6.0, carina_z - 45.0)
    airway = (
        (_segment_distance(x, y, z, top, carina) <= r_tr)
        | (_segment_distance(x, y, z, carina, hilum_r) <= r_br)
        | (_segment_distance(x, y, z, carina, hilum_l) <= r_br)
    ) & body

    # Bone: vertebral body (cancellous core, cortical rim), posterior arch, sternum, ribs.
    vertebra = np.broadcast_to(r_spine <= 18.0, shape)
    hu[vertebra] = TISSUE_HU["bone_cancellous"]
    hu[np.broadcast_to((r_spine > 15.0) & (r_spine <= 18.0), shape)] = TISSUE_HU["bone_cortical"]
    arch = np.broadcast_to((r_canal > 8.0) & (r_canal <= 13.0) & (y < spine_c[1]), shape)
    hu[arch] = TISSUE_HU["bone_cortical"]
    hu[np.broadcast_to(r_canal <= 8.0, shape)] = TISSUE_HU["spinal_canal"]
    sternum = (np.abs(xs) <= 12.0) & (ys > 0) & (r_cav > 1.0) & (r_fat <= 1.0)
    hu[np.broadcast_to(sternum, shape)] = TISSUE_HU["bone_cortical"]
    # Ribs: bands just outside the cavity, every 28 mm, sloping down anteriorly.
    rib_band = (r_cav > 1.0) & ((xs / (cav_ax + 9.0)) ** 2 + (ys / (cav_ay + 9.0)) ** 2 <= 1.0)
    phase = np.mod(z - lcz + 30.0 * (ys / ay + 1.0) / 2.0, 28.0)
    in_chest = (z >= lcz - 0.9 * lz) & (z <= lcz + lz)
    ribs = rib_band & (phase < 9.0) & in_chest & ~sternum
    hu[ribs] = TISSUE_HU["bone_cortical"]

    # Lung parenchyma: base value, a gravity gradient (posterior denser by up to 40 HU), and
    # vessel-like strands where two smooth random fields are both near zero (the
    # intersection of two zero-level surfaces is a network of curves, i.e. tubes), brighter
    # and thicker near the hilum.
    lung_any = right_lung | left_lung
    hilum_d = np.minimum(
        np.sqrt((x - hilum_r[0]) ** 2 + (y - hilum_r[1]) ** 2 + (z - hilum_r[2]) ** 2),
        np.sqrt((x - hilum_l[0]) ** 2 + (y - hilum_l[1]) ** 2 + (z - hilum_l[2]) ** 2),
    )
    proximity = np.exp(-hilum_d / 60.0)
    width = 0.18 + 0.15 * proximity
    tubes = np.exp(-(vessel_f1**2 + vessel_f2**2) / (2.0 * width**2))
    gradient = 40.0 * np.clip((-(y - sy) / cav_ay + 1.0) / 2.0, 0.0, 1.0)
    parenchyma = (
        TISSUE_HU["lung_parenchyma"] + lung_offset + gradient + (200.0 + 500.0 * proximity) * tubes
    )
    hu[lung_any] = np.broadcast_to(parenchyma, shape)[lung_any]
    hu[airway] = TISSUE_HU["airway_lumen"]

    # Partial-volume blur of the noiseless image, then slightly correlated noise; clip at
    # the scanner floor.
    hu = ndimage.gaussian_filter(hu, BLUR_SIGMA_VOX, mode="nearest") + noise
    hu = np.maximum(hu, -1024.0)

    labels = np.zeros(shape, dtype=np.uint8)
    labels[right_lung] = LABELS["right_lung"]
    labels[left_lung] = LABELS["left_lung"]
    labels[airway] = LABELS["airway"]
    return Volume(hu.astype(np.float32), affine), Volume(labels, affine.copy())


def render_subject(
    attributes: Mapping[str, Any],
    rng: np.random.Generator,
    size: int = 64,
    effects: Sequence[EffectSpec] | None = None,
) -> tuple[Volume, Volume]:
    """Render one subject and plant the effects of its (true) ``attributes``.

    Args:
        attributes: true attribute values (keys of :data:`PHANTOM_COLUMNS`).
        rng: the subject's anatomy generator; the attributes never change what it draws,
            so rendering twice from equal generators with different attributes gives images
            that differ exactly by the planted shifts.
        size: grid size ``S`` (volumes are ``(S, S, S)``).
        effects: effects to plant (default :func:`default_effects`).

    Returns:
        ``(image HU float32 (S, S, S), labels uint8 (S, S, S))`` sharing one RAS affine.
    """
    image, labels = render_anatomy(rng, size)
    effs = default_effects() if effects is None else effects
    planted = apply_effects(image.array, labels.array, image.affine, effs, attributes, _data_cfg())
    return image.with_array(planted), labels


def _data_cfg() -> DataConfig:
    return DataConfig(
        labels=dict(LABELS), lung_labels=["right_lung", "left_lung"], airway_label="airway"
    )


# Peak memory of render_subject per voxel, measured with ru_maxrss: 195 MB at 128^3
# (about 95 bytes per voxel), 38 MB at 64^3.  Used to refuse a size that cannot fit.
_BYTES_PER_VOXEL = 100
MAX_SIZE = 512


def check_phantom_args(n: int, size: int, seed: int = 0) -> None:
    """One-sentence :class:`UnveilError` for an unusable ``n``, ``size`` or ``seed``."""
    if seed < 0:
        raise UnveilError(f"--seed {seed} is negative; give a seed of 0 or more.")
    if size > MAX_SIZE:
        raise UnveilError(
            f"--size {size} is larger than a phantom needs (at most {MAX_SIZE}, about "
            f"{MAX_SIZE**3 * _BYTES_PER_VOXEL / 2**30:.0f} GiB while rendering); give 64 to 256."
        )
    need = size**3 * _BYTES_PER_VOXEL
    free = _available_memory()
    if free is not None and need > free:
        raise UnveilError(
            f"--size {size} needs about {need / 2**30:.1f} GiB of memory per subject while "
            f"rendering but {free / 2**30:.1f} GiB is available; give a smaller --size."
        )
    if n < 4:
        raise UnveilError(f"--n {n} is too small; a phantom cohort needs at least 4 subjects.")
    if size < 16 or size % 8:
        raise UnveilError(
            f"--size {size} is not usable; give a size of at least 16 that is divisible by 8 "
            "(e.g. 32 or 64)."
        )


def _available_memory() -> int | None:
    """Bytes of physical memory available now, or ``None`` where the OS does not say."""
    # Linux's MemAvailable counts reclaimable page cache; the sysconf figure does not.
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def make_phantom(
    out: str | os.PathLike,
    n: int = 64,
    size: int = 64,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    effects: Sequence[EffectSpec] | None = None,
) -> Path:
    """Write a phantom cohort to ``out`` and return its path.

    ``effects`` replaces :func:`default_effects` (for calibration grids and unit tests that
    plant other sizes); ``effects.json`` always records what was planted.

    Layout: ``images/sub-XXX.nii.gz`` (float32 HU), ``masks/sub-XXX.nii.gz`` (uint8 labels),
    ``clinical.csv`` (observed, ~15% missing), ``truth.csv`` (complete true attributes),
    ``effects.json`` (planted effects and everything needed to judge a recovery).  The
    folder appears complete or not at all.
    """
    from tqdm import tqdm

    check_phantom_args(n, size, seed)
    truth, clinical = phantom_table(n, seed)
    effects = default_effects() if effects is None else list(effects)
    gens = subject_generators(seed, n)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for k in tqdm(range(n), desc="phantom", unit="subject", disable=not progress):
            attrs = truth.iloc[k].drop("id").to_dict()
            image, labels = render_subject(attrs, gens[k][2], size, effects)
            sid = _subject_id(k)
            write_volume(image, tmp / "images" / f"{sid}.nii.gz")
            write_volume(labels, tmp / "masks" / f"{sid}.nii.gz")
        write_text(tmp / "clinical.csv", _table_csv(clinical))
        write_text(tmp / "truth.csv", _table_csv(truth))
        record = effects_record(
            effects,
            PHANTOM_COLUMNS,
            negative_control=NULL_ATTRIBUTE,
            generator="unveil phantom",
            n=n,
            size=size,
            seed=seed,
            spacing_mm=FOV_MM / size,
            fov_mm=FOV_MM,
            hu_window=list(PreprocessConfig().hu_window),
            noise_std_hu=NOISE_STD_HU,
            noise=(
                f"white Gaussian noise smoothed with sigma {NOISE_SIGMA_VOX} voxel and scaled "
                f"to {NOISE_STD_HU:g} HU std, added after a {BLUR_SIGMA_VOX} voxel "
                "partial-volume blur; HU clipped at -1024 before the effects are added"
            ),
            tissue_hu=TISSUE_HU,
            labels=LABELS,
            missing_fraction=MISSING_FRACTION,
            truth_file="truth.csv",
            clinical_file="clinical.csv",
        )
        write_effects_json(tmp / "effects.json", record)
    return out
