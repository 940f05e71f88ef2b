"""Cohort layout, clinical table, loading and ``check_cohort`` on tiny NIfTI cohorts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from unveil.config import Config, DataConfig, load_config
from unveil.data import cohort as cohort_mod
from unveil.data.cohort import Cohort, check_cohort, find_volumes
from unveil.data.io import Volume, write_volume
from unveil.data.table import duplicate_ids, find_table, read_clinical_table
from unveil.errors import DataError

# ------------------------------------------------------------------ cohort factory

AFFINE = np.array(
    [[-1.5, 0.0, 0.0, 20.0], [0.0, 1.5, 0.0, -30.0], [0.0, 0.0, 2.0, 10.0], [0.0, 0.0, 0.0, 1.0]]
)


def subject_arrays(shape: tuple[int, int, int], rng: np.random.Generator):
    """A tiny chest: air outside, a soft-tissue body, two lung boxes (1, 2), airway (3).

    Returns ``(image float32 HU, mask int16)``, both of ``shape``.
    """
    x, y, z = shape
    image = np.full(shape, -1000.0, np.float32)
    mask = np.zeros(shape, np.int16)
    image[1 : x - 1, 1 : y - 1, :] = 40.0  # body
    hx, qy = x // 2, y // 4
    mask[2 : hx - 1, qy : y - qy, 1 : z - 1] = 1  # right lung (low i: RAS flipped by affine)
    mask[hx + 1 : x - 2, qy : y - qy, 1 : z - 1] = 2  # left lung
    mask[hx - 1 : hx + 1, qy : qy + 2, z // 2 : z - 1] = 3  # airway between the lungs
    image[mask > 0] = -850.0
    image[mask == 3] = -990.0
    image += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return image, mask


@dataclass
class Made:
    root: Path
    ids: list[str]

    def image(self, sid: str, suffix: str = ".nii.gz") -> Path:
        return self.root / "images" / f"{sid}{suffix}"

    def mask(self, sid: str, suffix: str = ".nii.gz") -> Path:
        return self.root / "masks" / f"{sid}{suffix}"

    @property
    def table(self) -> Path:
        return self.root / "clinical.csv"


def make_cohort(
    root: Path,
    n: int = 3,
    shape: tuple[int, int, int] = (12, 12, 10),
    suffix: str = ".nii.gz",
    seed: int = 0,
    id_column: str = "id",
) -> Made:
    """Write a clean cohort of ``n`` subjects (``s00``, ``s01``...) under ``root``."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:02d}" for i in range(n)]
    for sid in ids:
        image, mask = subject_arrays(shape, rng)
        write_volume(Volume(image, AFFINE), root / "images" / f"{sid}{suffix}")
        write_volume(Volume(mask, AFFINE), root / "masks" / f"{sid}{suffix}")
    table = pd.DataFrame(
        {
            id_column: ids,
            "age": [60 + i for i in range(n)],
            "sex": ["female", "male"] * (n // 2) + ["female"] * (n % 2),
            "smoking": ["never", None, "current"] * (n // 3) + ["never"] * (n % 3),
        }
    )
    table.to_csv(root / "clinical.csv", index=False)
    return Made(root, ids)


@pytest.fixture
def cohort_factory(tmp_path):
    """``make(**kwargs)`` writes a fresh cohort in its own folder of ``tmp_path``."""
    counter = iter(range(1000))

    def make(**kwargs) -> Made:
        return make_cohort(tmp_path / f"cohort{next(counter)}", **kwargs)

    return make


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    """Write with nibabel directly, keeping the dtype (e.g. a float mask)."""
    nib.save(nib.Nifti1Image(array, affine), str(path))


# ------------------------------------------------------------------------- table


def test_read_clinical_table_keeps_ids_as_text_and_values_as_read(tmp_path):
    path = tmp_path / "clinical.csv"
    # BOM, padded header, leading zeros, a blank line, "None" as an answer, NA as missing.
    path.write_text("\ufeff id ,age,exposure\n007,70,None\n\n 8 ,NA,dust\n", encoding="utf-8")
    df = read_clinical_table(path)
    assert list(df.columns) == ["id", "age", "exposure"]
    assert list(df["id"]) == ["007", "8"]
    assert list(df.index) == [2, 4]  # row numbers in the file, header = 1
    assert df.loc[2, "exposure"] == "None"
    assert np.isnan(df.loc[4, "age"])
    assert df.loc[2, "age"] == 70


def test_read_clinical_table_xlsx_and_tsv(tmp_path):
    pd.DataFrame({"patient": [1.0, 2.0], "age": [50, None]}).to_excel(
        tmp_path / "t.xlsx", index=False
    )
    df = read_clinical_table(tmp_path / "t.xlsx", id_column="patient")
    assert list(df["patient"]) == ["1", "2"]  # Excel numbers become plain ids
    assert df["age"].isna().tolist() == [False, True]
    (tmp_path / "t.tsv").write_text("id\tage\na\t1\nb\t2\n")
    assert list(read_clinical_table(tmp_path / "t.tsv")["id"]) == ["a", "b"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("id,age\na,1\nb,2,3\n", "line 3"),
        ("", "is empty"),
        ("id,age\n", "no rows"),
        ("ID,age\na,1\n", "did you mean 'ID'"),
        ("patient,age\na,1\n", "--id-column"),
        ("id,age,sex\na,1\n", "line 2 has 2 fields"),
    ],
)
def test_read_clinical_table_errors_are_one_sentence(tmp_path, text, expected):
    path = tmp_path / "clinical.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_clinical_table(path)
    msg = str(err.value)
    assert expected in msg and str(path) in msg
    assert "\n" not in msg


def test_read_clinical_table_missing_and_damaged_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_clinical_table(tmp_path / "nope.csv")
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.xlsx is not a readable .xlsx"):
        read_clinical_table(tmp_path / "bad.xlsx")
    (tmp_path / "latin.csv").write_bytes("id,name\na,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_clinical_table(tmp_path / "latin.csv")


def test_find_table_and_duplicates(tmp_path):
    with pytest.raises(DataError, match="no clinical table"):
        find_table(tmp_path)
    (tmp_path / "clinical.csv").write_text("id\na\nb\na\n")
    assert find_table(tmp_path) == tmp_path / "clinical.csv"
    (tmp_path / "clinical.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="clinical.csv and clinical.xlsx"):
        find_table(tmp_path)
    assert find_table(tmp_path, "clinical.csv") == tmp_path / "clinical.csv"
    with pytest.raises(DataError, match="data.table"):
        find_table(tmp_path, "other.csv")
    assert duplicate_ids(read_clinical_table(tmp_path / "clinical.csv")) == ["a"]


# ------------------------------------------------------------------------ layout


def test_find_volumes_files_series_folders_hidden_and_duplicates(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "a.nrrd").write_bytes(b"")
    (tmp_path / "b.mha").write_bytes(b"")
    (tmp_path / "c").mkdir()  # a DICOM series folder
    (tmp_path / ".d.nii.gz.tmp.nii.gz").write_bytes(b"")  # half-written temporary
    (tmp_path / "notes.txt").write_text("x")
    found = find_volumes(tmp_path)
    assert list(found) == ["a", "b", "c"]
    assert [p.name for p in found["a"]] == ["a.nii.gz", "a.nrrd"]
    assert found["c"] == [tmp_path / "c"]


def test_cohort_open_and_load(cohort_factory):
    made = cohort_factory(n=3)
    cohort = Cohort.open(made.root, DataConfig())
    assert cohort.ids == ["s00", "s01", "s02"]
    assert cohort.problems == []
    assert list(cohort.table.index) == made.ids and cohort.table.index.name == "id"
    rows = cohort.rows()
    assert rows["s00"] == {"age": 60, "sex": "female", "smoking": "never"}
    assert rows["s01"]["smoking"] is None  # missing stays missing, not imputed
    image, mask = cohort.load("s01")
    assert image.array.dtype == np.float32 and mask.array.dtype == np.int16
    assert image.shape == mask.shape == (12, 12, 10)
    np.testing.assert_allclose(image.affine, AFFINE)
    np.testing.assert_allclose(mask.affine, AFFINE)
    _, expected_mask = subject_arrays((12, 12, 10), np.random.default_rng(0))  # same boxes
    np.testing.assert_array_equal(mask.array, expected_mask)
    assert -1100 < image.array.min() < -900 and 0 < image.array.max() < 150
    with pytest.raises(DataError, match="'zz' is not among the 3 complete subjects"):
        cohort.load("zz")


def test_cohort_open_leaves_out_incomplete_subjects(cohort_factory):
    made = cohort_factory(n=3)
    made.mask("s01").unlink()
    with made.table.open("a") as f:
        f.write("s01,1,male,never\n")  # duplicate id s01 too
    cohort = Cohort.open(made.root, DataConfig())
    assert cohort.ids == ["s00", "s02"]
    messages = " ".join(p.message for p in cohort.problems)
    assert "images/s01.nii.gz has no mask" in messages
    assert "id 's01' on 2 rows" in messages
    assert "s01" not in cohort.table.index  # ambiguous rows are not indexed


def test_cohort_open_without_table_when_not_required(cohort_factory):
    made = cohort_factory(n=2)
    made.table.unlink()
    with pytest.raises(DataError, match="no clinical table"):
        Cohort.open(made.root, DataConfig())
    cohort = Cohort.open(made.root, DataConfig(), require_table=False)
    assert cohort.ids == ["s00", "s01"] and cohort.table is None
    assert cohort.rows() == {"s00": {}, "s01": {}}


def test_cohort_open_layout_errors(cohort_factory, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Cohort.open(tmp_path / "missing", DataConfig())
    made = cohort_factory(n=1)
    for p in (made.root / "masks").iterdir():
        p.unlink()
    (made.root / "masks").rmdir()
    with pytest.raises(DataError, match="has no masks/ folder"):
        Cohort.open(made.root, DataConfig())
    (made.root / "masks").mkdir()
    with pytest.raises(DataError, match="no complete subject.*has no mask"):
        Cohort.open(made.root, DataConfig())


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("shape", "has shape 12x12x8 but its image"),
        ("affine", "placed up to 5 mm away"),
        ("fraction", "non-integer voxel value"),
        ("label", "label value(s) 9 that data.labels does not name"),
        ("nan", "1 NaN and 1 infinite"),
    ],
)
def test_cohort_load_refuses_bad_subjects(cohort_factory, breakage, expected):
    made = cohort_factory(n=1)
    image, mask = subject_arrays((12, 12, 10), np.random.default_rng(1))
    if breakage == "shape":
        save_nifti(mask[:, :, :8], made.mask("s00"))
    elif breakage == "affine":
        shifted = AFFINE.copy()
        shifted[:3, 3] += (3.0, 4.0, 0.0)
        save_nifti(mask, made.mask("s00"), shifted)
    elif breakage == "fraction":
        save_nifti(mask.astype(np.float32) * 0.5, made.mask("s00"))
    elif breakage == "label":
        mask[0, 0, 0] = 9
        save_nifti(mask, made.mask("s00"))
    elif breakage == "nan":
        image[0, 0, 0], image[1, 0, 0] = np.nan, np.inf
        save_nifti(image, made.image("s00"))
    cohort = Cohort.open(made.root, DataConfig())
    with pytest.raises(DataError) as err:
        cohort.load("s00")
    assert expected in str(err.value)
    assert "s00.nii.gz" in str(err.value)


def test_cohort_load_accepts_integer_valued_float_mask(cohort_factory):
    made = cohort_factory(n=1)
    _, mask = subject_arrays((12, 12, 10), np.random.default_rng(0))
    save_nifti(mask.astype(np.float32), made.mask("s00"))
    _, loaded = Cohort.open(made.root, DataConfig()).load("s00")
    assert loaded.array.dtype == np.int16
    np.testing.assert_array_equal(loaded.array, mask)


# ------------------------------------------------------------------------- check


def test_check_clean_cohort(cohort_factory):
    made = cohort_factory(n=3)
    report = check_cohort(made.root, Config())
    assert report.problems == []
    assert report.usable and report.complete == made.ids
    row = report.rows[0]
    assert row.id == "s00" and row.shape == (12, 12, 10)
    assert row.spacing == pytest.approx((1.5, 1.5, 2.0))
    assert row.orientation == "LAS"
    assert row.labels == (0, 1, 2, 3)
    assert row.table_rows == 1 and row.in_table
    assert -1100 < row.hu_min < -950 and 40 < row.hu_max < 200


def test_check_reads_each_volume_once(cohort_factory, monkeypatch):
    made = cohort_factory(n=3)
    calls: list[Path] = []
    real = cohort_mod.read_volume

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cohort_mod, "read_volume", counting)
    check_cohort(made.root, Config())
    assert sorted(calls) == sorted(
        [made.image(s) for s in made.ids] + [made.mask(s) for s in made.ids]
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_mask(made: Made, fn) -> None:
    _, mask = subject_arrays((12, 12, 10), np.random.default_rng(5))
    out = fn(mask)
    if isinstance(out, tuple):
        save_nifti(out[0], made.mask("s01"), out[1])
    else:
        save_nifti(out, made.mask("s01"))


def _set_image(made: Made, fn) -> None:
    image, _ = subject_arrays((12, 12, 10), np.random.default_rng(5))
    save_nifti(fn(image).astype(np.float32), made.image("s01"))


def _shift(mask):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.5
    return mask, shifted


def _set_value(mask, value):
    mask = mask.copy()
    mask[0, 0, 0:2] = value
    return mask


def _add_nan(image):
    image[0, 0, 0:3] = np.nan
    image[0, 1, 0] = -np.inf
    return image


# (name, breakage(made), level, file that the sentence names, words in it)
PROBLEMS = [
    (
        "table id without image",
        lambda m: m.table.open("a").write("ghost,70,male,never\n"),
        "warning",
        "clinical.csv",
        "a row for 'ghost'",
    ),
    (
        "image without table row",
        lambda m: m.table.write_text(m.table.read_text().replace("s01,", "s1,")),
        "error",
        "images/s01.nii.gz",
        "has no row in",
    ),
    (
        "image without mask",
        lambda m: m.mask("s01").unlink(),
        "error",
        "images/s01.nii.gz",
        "has no mask",
    ),
    (
        "mask without image",
        lambda m: m.image("s01").unlink(),
        "error",
        "masks/s01.nii.gz",
        "has no image",
    ),
    (
        "duplicate ids",
        lambda m: m.table.open("a").write("s01,99,male,never\n"),
        "error",
        "clinical.csv",
        "id 's01' on 2 rows (3, 5)",
    ),
    (
        "two image files",
        lambda m: m.image("s01").with_name("s01.mha").write_bytes(m.image("s01").read_bytes()),
        "error",
        "s01.mha",
        "2 entries for subject 's01'",
    ),
    (
        "mask shape",
        lambda m: _set_mask(m, lambda a: a[:, :, :9]),
        "error",
        "masks/s01.nii.gz",
        "shape 12x12x9",
    ),
    (
        "mask affine",
        lambda m: _set_mask(m, _shift),
        "error",
        "masks/s01.nii.gz",
        "up to 2.5 mm away",
    ),
    (
        "non-integer mask",
        lambda m: _set_mask(m, lambda a: a.astype(np.float32) + 0.25),
        "error",
        "masks/s01.nii.gz",
        "non-integer voxel value(s) (e.g. 0.25)",
    ),
    (
        "unexpected labels",
        lambda m: _set_mask(m, lambda a: _set_value(_set_value(a, 7), 7)),
        "error",
        "masks/s01.nii.gz",
        "label value(s) 7 that data.labels does not name (it has 0=background, right_lung=1",
    ),
    (
        "negative label",
        lambda m: _set_mask(m, lambda a: _set_value(a, -1)),
        "error",
        "masks/s01.nii.gz",
        "label value(s) -1",
    ),
    (
        "no lung voxels",
        lambda m: _set_mask(m, lambda a: np.where(a == 3, 3, 0).astype(np.int16)),
        "error",
        "masks/s01.nii.gz",
        "no lung voxels",
    ),
    (
        "nan in image",
        lambda m: _set_image(m, _add_nan),
        "error",
        "images/s01.nii.gz",
        "3 NaN and 1 infinite",
    ),
    (
        "normalised image",
        lambda m: _set_image(m, lambda a: (a - a.min()) / (a.max() - a.min())),
        "warning",
        "images/s01.nii.gz",
        "looks normalised",
    ),
    (
        "8-bit image",
        lambda m: _set_image(m, lambda a: np.clip((a + 1000) / 8, 0, 255)),
        "warning",
        "images/s01.nii.gz",
        "8-bit display values",
    ),
    (
        "intercept missing",
        lambda m: _set_image(m, lambda a: a + 1200),
        "warning",
        "images/s01.nii.gz",
        "without the rescale intercept",
    ),
    (
        "no soft tissue",
        lambda m: _set_image(m, lambda a: a - 1500),
        "warning",
        "images/s01.nii.gz",
        "no soft tissue",
    ),
    (
        "wrong slope",
        lambda m: _set_image(m, lambda a: a * 100),
        "warning",
        "images/s01.nii.gz",
        "far outside the HU range",
    ),
    (
        "lungs not air",
        lambda m: _set_image(m, lambda a: np.where(a > -950, 40.0, a)),
        "warning",
        "masks/s01.nii.gz",
        "not air-like",
    ),
    (
        "truncated image",
        lambda m: _truncate(m.image("s01")),
        "error",
        "images/s01.nii.gz",
        "unreadable or truncated",
    ),
    (
        "garbage mask",
        lambda m: m.mask("s01").write_bytes(b"\x00" * 40),
        "error",
        "masks/s01.nii.gz",
        "unreadable or truncated",
    ),
    (
        "stray file",
        lambda m: (m.root / "images" / "notes.txt").write_text("x"),
        "warning",
        "images",
        "notes.txt",
    ),
    (
        "empty id",
        lambda m: m.table.open("a").write(",70,male,never\n"),
        "warning",
        "clinical.csv",
        "empty 'id' (row 5)",
    ),
    ("no table", lambda m: m.table.unlink(), "error", "cohort", "no clinical table"),
    (
        "no id column",
        lambda m: m.table.write_text(m.table.read_text().replace("id,", "patient,", 1)),
        "error",
        "clinical.csv",
        "no id column 'id'",
    ),
    ("no masks folder", lambda m: _rmtree(m.root / "masks"), "error", "cohort", "no masks/ folder"),
]


def _rmtree(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


@pytest.mark.parametrize(
    "name, breakage, level, filename, words", PROBLEMS, ids=[p[0] for p in PROBLEMS]
)
def test_check_reports_each_problem(cohort_factory, name, breakage, level, filename, words):
    made = cohort_factory(n=3)
    breakage(made)
    report = check_cohort(made.root, Config())
    hits = [p for p in report.problems if words in p.message]
    assert hits, f"no problem mentions {words!r}; got {[p.message for p in report.problems]}"
    problem = hits[0]
    assert problem.level == level
    assert filename in problem.message
    assert "\n" not in problem.message and problem.message.endswith(".")
    # warnings keep the cohort usable; errors do not
    assert report.usable == (level == "warning")
    if level == "error" and name not in ("no table", "no id column", "no masks folder"):
        assert not next(r for r in report.rows if r.id == "s01").complete
        assert "s00" in report.complete


def test_check_unlabelled_values_are_fine_once_configured(cohort_factory):
    made = cohort_factory(n=2)
    _set_mask(made, lambda a: _set_value(a, 7))
    cfg = load_config(None, ["data.labels={right_lung: 1, left_lung: 2, airway: 3, tumour: 7}"])
    report = check_cohort(made.root, cfg)
    assert report.usable and report.problems == []
    assert report.rows[1].labels == (0, 1, 2, 3, 7)


def test_check_empty_cohort_is_not_usable(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "clinical.csv").write_text("id,age\na,1\n")
    report = check_cohort(tmp_path, Config())
    assert not report.usable
    assert any("holds no subject" in p.message for p in report.errors)
