"""One subject of ``unveil evaluate``: generate it from its own mask and sentence, measure it.

:func:`evaluate_subject` loads the subject and runs the generator (and the segmenter and
feature networks); the figures themselves come from pure functions on arrays,
:func:`volume_figures` (paired fidelity, Wasserstein, texture) and :func:`mask_figures`
(Dice of the segmenter's mask), so they are tested without a model or a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from unveil.data.lungmask import lungmask
from unveil.data.regions import region_masks
from unveil.errors import DataError
from unveil.infer.counterfactual import check_finite, subject_noise
from unveil.metrics.adherence import AttributeModel, adherence_input, edit_target
from unveil.metrics.distribution import histogram_distances
from unveil.metrics.eval_types import Row, SubjectResult, SubjectSettings, TextureStats
from unveil.metrics.features import slices_for_fid, volumes_for_fid
from unveil.metrics.paired import body_mask, mask_consistency, paired_fidelity
from unveil.metrics.texture import texture_distance, texture_stats_regions
from unveil.text.edits import Edit, apply_edits

#: A segmentation of one scan: the label map, or ``None`` and the segmenter's sentence.
Segmentation = tuple[np.ndarray | None, str | None]


def structures(data_cfg: Any) -> dict[str, tuple[int, ...]]:
    """Structures for the mask-consistency Dice: ``lung`` (all lung labels), each lung
    label, and the airway, as label values of ``data_cfg``."""
    labels = data_cfg.labels
    lung = tuple(int(labels[n]) for n in data_cfg.lung_labels)
    out: dict[str, tuple[int, ...]] = {"lung": lung}
    if len(lung) > 1:
        for name in data_cfg.lung_labels:
            out[name] = (int(labels[name]),)
    if data_cfg.airway_label:
        out[data_cfg.airway_label] = (int(labels[data_cfg.airway_label]),)
    return out


@dataclass(frozen=True)
class Instruments:
    """What measures a subject beyond the arrays: the generator, the cohort it reads,
    the feature networks (``None`` when not named), the adherence readers and the edits
    whose effectiveness is measured."""

    gen: Any
    cohort: Any
    net2d: Any | None = None
    net3d: Any | None = None
    readers: Mapping[str, AttributeModel] | None = None
    edits: Mapping[str, Edit] | None = None


class Generated(NamedTuple):
    """One subject's generation: its preprocessed inputs, its noise, the output tensor."""

    prepared: Any
    noise: Any
    fake: Any


# ------------------------------------------------------------------------ pure figures


def volume_figures(
    real: np.ndarray,
    fake: np.ndarray,
    lung: np.ndarray,
    regions: Mapping[str, np.ndarray],
    window: tuple[float, float],
) -> tuple[Row, Row, TextureStats, TextureStats]:
    """Paired fidelity and weight-free realism of one generated scan against its real one.

    Args:
        real, fake: the volumes in HU on the same grid.
        lung: the lung mask (boolean).
        regions: region name -> boolean mask (:func:`unveil.data.regions.region_masks`).
        window: the model's HU window; the realism figures clip both sides to it.

    Returns:
        ``(fidelity and wasserstein_<region>, texture_<region>/<feature> differences,
        real texture statistics, generated texture statistics)``.
    """
    rec: Row = dict(paired_fidelity(real, fake, lung, window, body_mask=body_mask(real)))
    for name, d in histogram_distances([real], [fake], [regions], hu_window=window).items():
        rec[f"wasserstein_{name}"] = d
    t_real = texture_stats_regions(np.clip(real, *window), regions)
    t_fake = texture_stats_regions(np.clip(fake, *window), regions)
    texture = {f"texture_{k}": v for k, v in texture_distance(t_real, t_fake).items()}
    return rec, texture, t_real, t_fake


def mask_figures(
    segmented: Mapping[str, Segmentation],
    label_map: np.ndarray,
    labels: Mapping[str, tuple[int, ...]],
) -> Row:
    """Dice of a segmenter's mask against the input mask, per column prefix.

    ``segmented`` maps a prefix (``""`` for the generated scan, ``"ref_"`` for the real
    one) to the segmenter's label map, or ``None`` and its sentence when it found no
    lungs: a recorded failure (``lungmask_failed`` 1, Dice 0), never a crash.
    """
    rec: Row = {}
    for prefix, (derived, error) in segmented.items():
        failed = 0 if derived is not None else 1
        found = derived if derived is not None else np.zeros_like(label_map)
        for key, value in mask_consistency(found, label_map, labels).items():
            rec[f"{prefix}{key}"] = value
        rec[f"{prefix}lungmask_failed"] = failed
        rec[f"{prefix}lungmask_error"] = error
    return rec


def reader_input(unit_tensor: Any, label_map: Any, lung_values: tuple[int, ...], size: int):
    """A ``[-1, 1]`` tensor ``(X', Y', Z')`` on the preprocessed grid -> reader input."""
    x01 = (np.asarray(unit_tensor.detach().cpu().numpy(), dtype=np.float32) + 1.0) / 2.0
    lung = np.isin(np.asarray(label_map), lung_values)
    return adherence_input(x01, lung, size)


# ------------------------------------------------------------------------ one subject


def evaluate_subject(
    tools: Instruments, settings: SubjectSettings, sid: str, row: Mapping[str, Any]
) -> SubjectResult:
    """Generate subject ``sid`` (own mask, own sentence ``row``, noise of the seed) and
    measure it against its real scan."""
    gen = tools.gen
    image, mask = tools.cohort.load(sid)
    prepared = gen.pre.prepare(image, mask)
    noise = subject_noise(tuple(prepared.image.shape[-3:]), sid, settings.seed)
    fake = gen.generate(prepared, gen.template.render(row), noise)
    fake_vol = gen.to_hu(fake, prepared)
    check_finite(fake_vol, sid, settings.seed, "evaluation")  # NaN would read as results
    real = np.asarray(image.array, dtype=np.float32)
    fake_hu = np.asarray(fake_vol.array, dtype=np.float32)
    label_map = np.asarray(mask.array)
    lung = np.isin(label_map, settings.labels["lung"])
    regions = region_masks(label_map, mask.affine, gen.cfg.data)

    rec, texture, t_real, t_fake = volume_figures(real, fake_hu, lung, regions, settings.window)
    # The segmenter on the generated scan, and on the real one as its ceiling.
    segmented = {"": _segment(fake_vol, gen.cfg.data), "ref_": _segment(image, gen.cfg.data)}
    rec = {"id": sid} | rec | mask_figures(segmented, label_map, settings.labels) | texture
    result = SubjectResult(rec, t_real, t_fake)
    if tools.net2d is not None:
        result.features_2d = tuple(  # type: ignore[assignment]
            tools.net2d.extract_2d(
                slices_for_fid(v, settings.window, size=settings.size_2d, mask=lung)
            )
            for v in (real, fake_hu)
        )
    if tools.net3d is not None:
        result.features_3d = tuple(  # type: ignore[assignment]
            tools.net3d.extract_3d(volumes_for_fid([v], settings.window, size=settings.size_3d))
            for v in (real, fake_hu)
        )
    if tools.readers:
        _read_subject(tools, settings, sid, row, Generated(prepared, noise, fake), result)
    return result


def _segment(volume: Any, data_cfg: Any) -> Segmentation:
    """``unveil lungmask`` on a volume; its sentence instead when it finds no lungs."""
    try:
        return np.asarray(lungmask(volume, data_cfg).array), None
    except DataError as err:
        return None, str(err)


def _read_subject(
    tools: Instruments,
    settings: SubjectSettings,
    sid: str,
    row: Mapping[str, Any],
    generated: Generated,
    result: SubjectResult,
) -> None:
    """The readers' inputs of the real and generated scan, and of each edited volume
    (same mask, same noise, edited prompt) for the edits that change this prompt."""
    gen, template = tools.gen, tools.gen.template
    prepared, noise, fake = generated
    lung_values, size = settings.labels["lung"], settings.reader_size
    result.reader_real = reader_input(prepared.image[0], prepared.label_map, lung_values, size)
    result.reader_fake = reader_input(fake[0, 0], prepared.label_map, lung_values, size)
    for name, e in (tools.edits or {}).items():
        target = edit_target(template, e, row)
        if target is None:
            continue
        x = gen.generate(prepared, template.render(apply_edits(row, [e], template)), noise)
        check_finite(SimpleNamespace(array=x.detach().cpu().numpy()), sid, settings.seed, name)
        result.edited[name] = (
            target,
            reader_input(x[0, 0], prepared.label_map, lung_values, size),
        )
