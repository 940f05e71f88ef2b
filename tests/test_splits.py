"""Patient-level splits: deterministic, disjoint, covering, saved once, mismatches refused."""

from __future__ import annotations

import json
import logging

import pytest

from unveil.config import SplitConfig
from unveil.data.splits import load_or_make_splits, make_splits, split_counts
from unveil.errors import DataError

IDS = [f"case{i:03d}" for i in range(20)]


def test_deterministic_disjoint_covering():
    a = make_splits(IDS, (0.7, 0.15, 0.15), seed=3)
    b = make_splits(list(reversed(IDS)), (0.7, 0.15, 0.15), seed=3)  # input order is irrelevant
    assert a == b
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    flat = a["train"] + a["val"] + a["test"]
    assert sorted(flat) == IDS and len(set(flat)) == len(IDS)
    assert all(v == sorted(v) for v in a.values())
    c = make_splits(IDS, (0.7, 0.15, 0.15), seed=4)
    assert c != a  # the seed matters


def test_counts_sum_and_minimum_one():
    assert split_counts(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert split_counts(3, (0.9, 0.05, 0.05)) == [1, 1, 1]
    assert split_counts(2, (0.9, 0.05, 0.05)) == [2, 0, 0]  # not enough ids: no forcing
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]
    assert split_counts(0, (0.7, 0.15, 0.15)) == [0, 0, 0]
    for n in range(1, 40):
        assert sum(split_counts(n, (0.6, 0.25, 0.15))) == n


def test_duplicate_ids_are_refused():
    with pytest.raises(DataError, match="case001"):
        make_splits(["case001", "case002", "case001"], (0.5, 0.25, 0.25), 0)


def test_saved_and_reused(tmp_path, caplog):
    cfg = SplitConfig(fractions=(0.6, 0.2, 0.2), seed=1)
    path = tmp_path / "splits.json"
    first = load_or_make_splits(path, IDS, cfg)
    saved = json.loads(path.read_text())
    assert saved["seed"] == 1 and saved["fractions"] == [0.6, 0.2, 0.2]
    assert saved["splits"] == first
    # a different seed in the config does not re-split: the file wins (with a warning)
    with caplog.at_level(logging.WARNING, logger="unveil.data.splits"):
        again = load_or_make_splits(tmp_path, IDS, SplitConfig(fractions=(0.6, 0.2, 0.2), seed=9))
    assert again == first
    assert "delete the file" in caplog.text
    assert again != make_splits(IDS, (0.6, 0.2, 0.2), 9)


def test_mismatch_is_an_error(tmp_path):
    cfg = SplitConfig()
    path = tmp_path / "splits.json"
    load_or_make_splits(path, IDS, cfg)
    before = path.read_text()
    with pytest.raises(DataError, match="misses 1 cohort ids \\(new\\).*delete it"):
        load_or_make_splits(path, [*IDS, "new"], cfg)
    with pytest.raises(DataError, match="1 ids not in the cohort \\(case000\\)"):
        load_or_make_splits(path, IDS[1:], cfg)
    assert path.read_text() == before  # never silently re-split


def test_corrupt_file_is_an_error(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_or_make_splits(path, IDS, SplitConfig())
    path.write_text(json.dumps({"splits": {"train": IDS[:10], "val": IDS[5:15], "test": IDS[15:]}}))
    with pytest.raises(DataError, match="more than one split"):
        load_or_make_splits(path, IDS, SplitConfig())
