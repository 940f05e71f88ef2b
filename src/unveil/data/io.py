"""Reading and writing volumes; a volume always travels with its affine.

Convention (the one nibabel and MONAI use): ``Volume.array`` is indexed ``(i, j, k)`` in
voxel order and ``Volume.affine`` maps voxel indices to RAS+ world millimetres.  ITK-based
formats (NRRD, MHA, DICOM) store LPS directions; MONAI's ``ITKReader`` converts them to the
RAS affine on reading and we convert back on writing, so a volume read from any format and
written to any other overlays its source in a viewer.

No format is parsed by hand: NIfTI goes through nibabel, NRRD / MHA / DICOM series through
ITK (via MONAI's reader).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from unveil.errors import DataError
from unveil.fs import atomic_path

#: Suffixes recognised as single-file volumes, longest first so ``.nii.gz`` wins over ``.gz``.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_NIFTI = (".nii.gz", ".nii")


@dataclass
class Volume:
    """A 3D array on a grid.

    Attributes:
        array: voxel values, shape ``(X, Y, Z)`` (HU as float32 for images, integers for
            label maps).
        affine: ``(4, 4)`` voxel index -> RAS+ world mm.
        path: where it was read from, if anywhere (used in error messages).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``RAS`` or ``LPS`` (the direction each array axis points to)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    def same_grid(self, other: Volume, atol: float = 1e-3) -> bool:
        """True when both volumes have the same shape and (to ``atol`` mm) the same affine."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on the same grid."""
        return Volume(array, self.affine.copy(), self.path)


def volume_suffix(path: str | os.PathLike) -> str:
    """The format suffix of ``path`` (``.nii.gz``, ``.nrrd``...) or ``""`` for a folder."""
    name = Path(path).name.lower()
    for suf in VOLUME_SUFFIXES:
        if name.endswith(suf):
            return suf
    return ""


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume suffix: the subject id in a cohort."""
    p = Path(path)
    suf = volume_suffix(p)
    return p.name[: len(p.name) - len(suf)] if suf else p.name


def read_volume(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder.

    Raises :class:`DataError` with one sentence when the file is missing, unreadable,
    truncated, or not 3D.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path.")
    suf = volume_suffix(path)
    try:
        if suf in _NIFTI:
            array, affine = _read_nifti(path)
        elif suf or path.is_dir():
            array, affine = _read_itk(path)
        else:
            raise DataError(
                f"{path} is not a volume unveil can read; use NIfTI (.nii/.nii.gz), NRRD, "
                "MHA/MHD or a folder holding one DICOM series."
            )
    except DataError:
        raise
    except Exception as err:  # nibabel/ITK raise many types for corrupt files
        reason = _error_reason(err)
        if path.is_dir():
            raise DataError(
                f"{path} is a folder but not a readable DICOM series ({reason}); put the "
                "DICOM files of exactly one series in it, or replace it with a NIfTI file."
            ) from None
        raise DataError(
            f"{path} is unreadable or truncated ({reason}); re-export it from the source."
        ) from None
    array = np.squeeze(array)
    if array.ndim != 3:
        raise DataError(
            f"{path} has shape {array.shape}, not a 3D volume; export a single 3D scan."
        )
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Volume(array, affine, path)


def _error_reason(err: BaseException) -> str:
    """The informative part of a reader's exception, on one short line.

    ITK exceptions start with a C++ source location and an ``ITK ERROR: Class(0x...):``
    prefix, and NRRD errors nest a chain of ``[nrrd]`` lines whose last one is the cause;
    neither helps a user, so both are stripped.
    """
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if not line or re.fullmatch(r".*\.(cxx|cpp|h|hxx):\d+:?", line):
            continue
        lines.append(re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", line))
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    reason = nrrd[-1] if nrrd else (lines[0] if lines else type(err).__name__)
    reason = reason.removeprefix("[nrrd] ").rstrip(".")
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    # get_fdata would turn label maps into float64; keep the stored type, applying the
    # scale only when the file asks for it.  The scaling must be read from the data proxy:
    # nibabel moves scl_slope/scl_inter out of a loaded image's header, so
    # ``img.header.get_slope_inter()`` is always (None, None) here, and the proxy would
    # silently return float64 for the usual int16 CT with intercept -1024.
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    if slope == 1.0 and inter == 0.0:
        array = np.asarray(img.dataobj)
    else:
        array = np.asarray(img.get_fdata(dtype=np.float32))
    return array, np.asarray(img.affine, dtype=np.float64)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # lazy MONAI (~7 s): only reading NRRD / MHA / DICOM uses it
    from monai.data import ITKReader

    reader = ITKReader(affine_lps_to_ras=True)
    # MONAI only warns when a folder holds several DICOM series and then reads the first
    # one; silently picking a scan is worse than refusing, so the warning becomes an error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = reader.read(str(path))
    if any("more than one DICOM series" in str(w.message) for w in caught):
        raise DataError(
            f"{path} holds more than one DICOM series; move each series into its own folder "
            "and keep only the one to use for this subject."
        )
    array, meta = reader.get_data(img)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    return np.asarray(array), affine


def write_volume(
    volume: Volume, path: str | os.PathLike, dtype: np.dtype | type | None = None
) -> Path:
    """Write ``volume`` atomically; the format follows the suffix (NIfTI, NRRD, MHA)."""
    path = Path(path)
    suf = volume_suffix(path)
    array = volume.array if dtype is None else volume.array.astype(dtype)
    with atomic_path(path, suffix=suf or None) as tmp:
        if suf in _NIFTI:
            img = nib.Nifti1Image(array, volume.affine)
            img.set_qform(volume.affine, code=1)
            img.set_sform(volume.affine, code=1)
            nib.save(img, str(tmp))
        elif suf in (".nrrd", ".mha", ".mhd", ".nhdr"):
            _write_itk(array, volume.affine, tmp)
        else:
            raise DataError(f"cannot write {path}: use a .nii.gz, .nii, .nrrd or .mha file name.")
    return path


def _write_itk(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    # lazy ITK (~0.25 s): only writing NRRD / MHA uses it
    import itk

    # ITK stores an LPS direction cosine matrix and an origin; our affine is RAS.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    # itk arrays are indexed (z, y, x): transpose our (i, j, k) array.
    img = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    itk.imwrite(img, str(path), compression=True)
