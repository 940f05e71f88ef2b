"""A synthetic chest-CT cohort with planted, exactly known effects (``unveil phantom``).

Each subject is a ``size^3`` volume in HU over a 350 mm field of view (isotropic spacing
``350 / size`` mm, array axes pointing R, A, S, centred on the origin) with a label map on
the same grid (0 background, 1 right lung, 2 left lung, 3 airway; the right lung lies at
positive RAS ``x``).  Anatomy: an elliptical body with subcutaneous fat (-100 HU) and
muscle (+40), a spine, sternum and ribs (bone +400..+800), mediastinum and heart (+40), two
lungs (parenchyma about -870 HU, denser posteriorly, with vessel-like strands that are
brighter near the hilum), trachea and main bronchi (-1000), partial-volume blur and
slightly correlated noise (:data:`NOISE_STD_HU`).  Lung size, body size, heart size,
diaphragm height and position vary per subject (drawn in :mod:`unveil.data.phantom_anatomy`).

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
import pandas as pd
from tqdm import tqdm

from unveil.config import DataConfig, PreprocessConfig
from unveil.data.effects import EffectSpec, apply_effects, effects_record, write_effects_json
from unveil.data.io import Volume, write_volume
from unveil.data.phantom_anatomy import (  # noqa: F401  (names of this module before the split)
    BLUR_SIGMA_VOX,
    FOV_MM,
    LABELS,
    NOISE_SIGMA_VOX,
    NOISE_STD_HU,
    TISSUE_HU,
    phantom_affine,
    render_anatomy,
)
from unveil.errors import UnveilError
from unveil.fs import atomic_dir, write_text

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
