"""Volume I/O: round trips keep array and affine; DICOM series; bad files give DataError."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unveil.data.io import (
    VOLUME_SUFFIXES,
    Volume,
    _error_reason,
    read_volume,
    volume_stem,
    volume_suffix,
    write_volume,
)
from unveil.errors import DataError


def oblique_affine(angle_deg: float = 20.0) -> np.ndarray:
    """RAS affine: a rotation about z, anisotropic spacing (0.8, 0.9, 2.5) mm, an origin."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = (100.0, -50.0, 30.0)
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_array_dtype_and_affine(tmp_path, suffix):
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(-500, 300, size=(9, 8, 7)).astype(np.float32), oblique_affine())
    labels = Volume(rng.integers(0, 4, size=(9, 8, 7)).astype(np.int16), oblique_affine())
    for vol, name in ((image, "image"), (labels, "mask")):
        path = write_volume(vol, tmp_path / f"{name}{suffix}")
        back = read_volume(path)
        assert back.array.dtype == vol.array.dtype
        np.testing.assert_array_equal(back.array, vol.array)
        np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
        assert back.path == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"image{suffix}", f"mask{suffix}"]


def test_volume_geometry_helpers():
    vol = Volume(np.zeros((4, 5, 6), np.float32), oblique_affine())
    assert vol.shape == (4, 5, 6)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert vol.orientation == "RAS"
    assert Volume(np.zeros((2, 2, 2)), np.diag([-1.0, -1.0, 1.0, 1.0])).orientation == "LPS"
    other = vol.with_array(np.ones((4, 5, 6), np.float32))
    assert vol.same_grid(other) and other.array.sum() == 120
    moved = Volume(vol.array, vol.affine + np.pad(np.full((3, 1), 0.5), ((0, 1), (3, 0))))
    assert not vol.same_grid(moved)
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 2)), np.eye(4))


def test_suffix_and_stem():
    assert volume_suffix("a/b/case.1.nii.gz") == ".nii.gz"
    assert volume_stem("a/b/case.1.nii.gz") == "case.1"
    assert volume_stem("x.NRRD") == "x" and volume_suffix("x.NRRD") == ".nrrd"
    assert volume_suffix("series_folder") == "" and volume_stem("series_folder") == "series_folder"
    assert ".mha" in VOLUME_SUFFIXES


# ------------------------------------------------------------------------ DICOM


def write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray, series: str = "1") -> None:
    """Write ``hu`` (X, Y, Z) int16 as a CT series, one file per k slice, with pydicom.

    Pixels are stored unsigned with RescaleIntercept -1024, as scanners do, so reading
    must apply the rescale to get HU back.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    uid = {k: generate_uid(entropy_srcs=[k, series]) for k in ("study", "series", "frame")}
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "phantom"
        ds.StudyInstanceUID = uid["study"]
        ds.SeriesInstanceUID = uid["series"]
        ds.FrameOfReferenceUID = uid["frame"]
        ds.SeriesNumber = int(series)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0.0, 0.0, k, 1.0])[:3]]
        # DICOM rows run along the array's j axis, columns along i.
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(folder / f"s{series}_{k:03d}.dcm", enforce_file_format=True)


def test_dicom_series_folder_is_read_in_hu_with_its_affine(tmp_path):
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 1500, size=(10, 12, 6)).astype(np.int16)
    affine = oblique_affine(30.0)
    write_dicom_series(tmp_path / "case01", hu, affine)
    vol = read_volume(tmp_path / "case01")
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5), abs=1e-5)


def test_dicom_folder_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty is a folder but not a readable DICOM series"):
        read_volume(tmp_path / "empty")
    hu = np.zeros((4, 4, 3), np.int16)
    write_dicom_series(tmp_path / "two", hu, oblique_affine(), series="1")
    write_dicom_series(tmp_path / "two", hu + 5, oblique_affine(), series="2")
    with pytest.raises(DataError, match="two holds more than one DICOM series"):
        read_volume(tmp_path / "two")


# --------------------------------------------------------------------- bad files


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_truncated_file_is_a_data_error(tmp_path, suffix):
    path = write_volume(
        Volume(np.random.default_rng(2).normal(size=(16, 16, 16)).astype(np.float32), np.eye(4)),
        tmp_path / f"cut{suffix}",
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_volume(path)
    msg = str(err.value)
    assert f"{path} is unreadable or truncated" in msg and "\n" not in msg
    assert ".cxx" not in msg and "ITK ERROR" not in msg  # no C++ noise in the sentence


def test_not_3d_and_missing_files(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(DataError, match=r"shape \(4, 4, 4, 2\), not a 3D volume"):
        read_volume(tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1), np.float32), np.eye(4)), tmp_path / "s.nii.gz")
    with pytest.raises(DataError, match="not a 3D volume"):
        read_volume(tmp_path / "s.nii.gz")
    # a trailing singleton axis (x, y, z, 1) is still one 3D scan
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 1), np.float32), np.eye(4)), tmp_path / "o.nii.gz")
    assert read_volume(tmp_path / "o.nii.gz").shape == (4, 4, 3)
    with pytest.raises(DataError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="not a volume unveil can read"):
        read_volume(tmp_path / "x.png")


def test_write_refuses_unknown_suffix_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="cannot write"):
        write_volume(Volume(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_read_applies_nifti_scaling_and_dtype_argument(tmp_path):
    img = nib.Nifti1Image(np.array([[[0, 1], [2, 3]]] * 2, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol = read_volume(tmp_path / "scaled.nii.gz")
    assert vol.array.dtype == np.float32 and vol.array[0, 1, 1] == 3 * 2.0 - 1024
    assert read_volume(tmp_path / "scaled.nii.gz", dtype=np.float64).array.dtype == np.float64


def test_error_reason_strips_itk_noise():
    err = RuntimeError(
        "/src/ITK/Modules/IO/NRRD/src/itkNrrdImageIO.cxx:935:\n"
        "ITK ERROR: NrrdImageIO(0x55aa): Read: Error reading x.nrrd:\n"
        '[nrrd] nrrdLoad: trouble reading "x.nrrd"\n'
        "[nrrd] _nrrdEncodingGzip_read: expected 16384 bytes but received 8004\n"
    )
    assert _error_reason(err) == "_nrrdEncodingGzip_read: expected 16384 bytes but received 8004"
    assert _error_reason(ValueError("")) == "ValueError"
    assert _error_reason(OSError("line one\nline two")) == "line one"
