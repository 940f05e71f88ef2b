"""Training on a cohort larger than ``data.memory_budget_gb``: the preprocessed volumes are
cached on disk and read a patch at a time, with the same patches and so the same weights as
in memory, exactly resumable, the cache reused and never stale; and the loss log that is
brought to the host every ``train.log_every`` steps instead of every step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unveil.config import load_config, resolve_config_path
from unveil.errors import ConfigError, UnveilError
from unveil.runtime.checkpoint import list_checkpoints, load_checkpoint
from unveil.train.data import DATA_CACHE, load_training_data
from unveil.train.loop import _LossLog, train

FAST = ["train.val_every=1000", "train.log_every=1"]
TINY_BUDGET = "data.memory_budget_gb=0.000001"  # ~1 KiB: every subject is streamed


@pytest.fixture(scope="module")
def phantom24(tmp_path_factory) -> Path:
    """6 subjects at 24^3: larger than tiny-gan's 16^3 patch, so patch positions vary."""
    from unveil.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom24") / "cohort"
    make_phantom(out, n=6, size=24, seed=0)
    return out


def _cfg(*overrides: str):
    return load_config(resolve_config_path("tiny-gan"), [*FAST, *overrides])


def _final(run: Path) -> dict:
    return load_checkpoint(list_checkpoints(run)[-1])


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("models", "ema"):
        for name, sa in a[part].items():
            sb = b[part][name]
            if isinstance(sa, torch.Tensor):
                assert torch.equal(sa, sb), f"{part}.{name}"
            else:
                assert sa.keys() == sb.keys()
                assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{part}.{name}"


def _records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "losses.jsonl").read_text().splitlines()]


def test_budget_is_validated():
    assert _cfg().data.memory_budget_gb is None
    assert _cfg("data.memory_budget_gb=2.5").data.memory_budget_gb == 2.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="memory_budget_gb"):
            _cfg(f"data.memory_budget_gb={bad}")


def test_streamed_run_equals_in_memory_and_resumes_exactly(phantom24, tmp_path, monkeypatch):
    steps = ["train.ckpt_every=2", "train.steps=4"]
    mem, stream, part = tmp_path / "mem", tmp_path / "stream", tmp_path / "part"
    train(_cfg(*steps), phantom24, mem, steps=4, progress=False)
    train(_cfg(*steps, TINY_BUDGET), phantom24, stream, steps=4, progress=False)
    assert not (mem / DATA_CACHE).exists()
    cached = sorted(p.name for p in (stream / DATA_CACHE).iterdir())
    n_train = len(json.loads((stream / "splits.json").read_text())["splits"]["train"])
    assert len(cached) == 3 * n_train  # image, mask, record per subject
    assert not [n for n in cached if n.startswith(".")]  # no temporary file left
    _assert_same_weights(_final(mem), _final(stream))
    assert _records(mem) == _records(stream)

    # Stopped after 2 steps and resumed: the cache is read, not written again, and the
    # weights equal the uninterrupted streamed run's.
    train(_cfg(*steps, TINY_BUDGET), phantom24, part, steps=2, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (part / DATA_CACHE).iterdir()}
    from unveil.data import preprocess

    calls = []
    original = preprocess.Preprocessor.prepare
    monkeypatch.setattr(
        preprocess.Preprocessor,
        "prepare",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    train(_cfg(*steps, TINY_BUDGET), phantom24, part, steps=4, resume=True, progress=False)
    assert len(calls) == 1  # the validation subject only: training subjects came from disk
    assert {p.name: p.stat().st_mtime_ns for p in (part / DATA_CACHE).iterdir()} == before
    _assert_same_weights(_final(stream), _final(part))
    assert _records(stream) == _records(part)


def test_cache_is_reused_and_invalidated_by_preprocessing_changes(phantom24, tmp_path):
    run = tmp_path / "run"
    run.mkdir()

    def load(*overrides: str):
        return load_training_data(_cfg(TINY_BUDGET, *overrides), phantom24, run, progress=False)

    first = load()
    n = len(first.train)
    assert (first.streamed, first.cache_hits, first.cache_writes) == (n, 0, n)
    again = load()
    assert (again.streamed, again.cache_hits, again.cache_writes) == (n, n, 0)
    # Sampling settings do not change a preprocessed volume: still read from the cache.
    sampling = load("preprocess.patch_size=[8,8,8]", "preprocess.pos_fraction=0.5")
    assert (sampling.cache_hits, sampling.cache_writes) == (n, 0)
    # A preprocessing setting does: nothing stale is read, every subject is written anew.
    window = load("preprocess.hu_window=[-1000,400]")
    assert (window.cache_hits, window.cache_writes) == (0, n)
    assert not torch.equal(window.train[0].prepared.image[:], first.train[0].prepared.image[:])
    # So does a rewritten source file (its modification time is part of the entry's name).
    sid = first.train[0].id
    image = phantom24 / "images" / f"{sid}.nii.gz"
    st = image.stat()
    try:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        touched = load()
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (touched.cache_hits, touched.cache_writes) == (n - 1, 1)
    # An entry cut by a crash (its record, written last, missing) is written again.
    record = first.train[1].prepared.image.path.name.replace(".image.npy", ".json")
    (run / DATA_CACHE / record).unlink()
    assert load().cache_writes == 1


def test_budget_decides_what_is_streamed(phantom24, tmp_path):
    big = load_training_data(_cfg("data.memory_budget_gb=100"), phantom24, tmp_path / "a")
    assert big.streamed == 0 and not (tmp_path / "a" / DATA_CACHE).exists()
    # A budget of about two subjects: the first two are held, then all of them are spilled.
    one = big.train[0].prepared
    per_subject = sum(t.numel() * t.element_size() for t in (one.image, one.mask, one.label_map))
    budget = f"data.memory_budget_gb={2.5 * per_subject / 2**30}"
    mid = load_training_data(_cfg(budget), phantom24, tmp_path / "b", progress=False)
    assert mid.streamed == len(mid.train) == mid.cache_writes


@pytest.mark.parametrize("patch", [[16, 16, 16], [32, 16, 8]])
def test_streamed_patches_equal_in_memory_patches(phantom24, tmp_path, patch):
    """Same draws from the same stream, including a patch larger than the volume (padded)."""
    from unveil.data.patches import PatchSampler

    over = [f"preprocess.patch_size={patch}".replace(" ", "")]
    mem = load_training_data(_cfg(*over), phantom24, tmp_path / "m", progress=False)
    st = load_training_data(_cfg(*over, TINY_BUDGET), phantom24, tmp_path / "s", progress=False)
    assert st.cache_writes == len(st.train)
    # 32 > 24: a volume smaller than the patch is read back whole (the sampler pads it).
    assert st.streamed == (0 if patch[0] > 24 else len(st.train))

    def sampler(data):
        return PatchSampler(
            [s.prepared.image for s in data.train],
            [s.prepared.mask for s in data.train],
            patch,
            0.5,
            np.random.default_rng(7),
            fg_channels=[0, 1],
        )

    a, b = sampler(mem), sampler(st)
    for _ in range(6):
        pa, pb = a.sample(3), b.sample(3)
        assert pa.keys() == pb.keys()
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


def test_mapped_volume_reads_what_it_is_asked(tmp_path):
    from unveil.data.stream import VolumeCache

    cache = VolumeCache(tmp_path, max_open=1)
    image = torch.randn(1, 5, 6, 7)
    mask = torch.rand(3, 5, 6, 7)
    entry = cache.put("k", image, mask, note="x")
    other = cache.put("j", image + 1, mask, note="y")
    assert entry.shape == (5, 6, 7) and entry.image.ndim == 4
    assert entry.mask.shape == torch.Size([3, 5, 6, 7])
    sl = (slice(None), slice(1, 4), slice(0, 6), slice(2, 5))
    assert torch.equal(entry.image[sl], image[sl])
    assert torch.equal(other.image[sl], (image + 1)[sl])  # the map of "k" was closed
    assert torch.equal(entry.mask[[0, 2]], mask[[0, 2]])
    patch = entry.image[sl]
    patch += 1  # a copy: writable, and the file is untouched
    assert torch.equal(entry.image[sl], image[sl])
    found, record = cache.get("k")
    assert record["note"] == "x" and torch.equal(found.mask[:], mask)
    assert cache.get("missing") is None


# ------------------------------------------------------------------ the deferred loss log


def test_loss_log_flushes_tensors_and_floats_in_order(tmp_path):
    path = tmp_path / "losses.jsonl"
    log = _LossLog(path)
    log.add(1, {"a": torch.tensor(0.5), "b": 2.0})
    log.add(2, {"a": torch.tensor(0.25, dtype=torch.float64), "b": torch.tensor([1.5])})
    assert not path.exists()  # nothing reaches the host before a flush
    records = log.flush()
    assert records == [{"step": 1, "a": 0.5, "b": 2.0}, {"step": 2, "a": 0.25, "b": 1.5}]
    assert [json.loads(ln) for ln in path.read_text().splitlines()] == records
    assert log.flush() == []
    # Not the main rank: checked, not written.
    other = _LossLog(None)
    other.add(3, {"a": torch.tensor(1.0)})
    assert other.flush() == [{"step": 3, "a": 1.0}]


def test_loss_log_names_the_first_non_finite_step(tmp_path):
    path = tmp_path / "losses.jsonl"
    log = _LossLog(path)
    log.add(1, {"loss": torch.tensor(1.0)})
    log.add(2, {"loss": torch.tensor(float("nan"))})
    log.add(3, {"loss": torch.tensor(float("inf"))})
    with pytest.raises(UnveilError, match="diverged at step 2 .*--resume"):
        log.flush()
    # The records before the bad step are written, so the log stays one record per step.
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1]


def test_log_every_changes_when_not_what_the_loss_log_holds(tiny_phantom, tmp_path):
    """Losses reach the host every log_every steps, yet the log holds every step, the same
    as logging each step (and complete up to each checkpoint, which flushes too)."""
    every = tmp_path / "every"
    sparse = tmp_path / "sparse"
    train(_cfg("train.ckpt_every=2"), tiny_phantom, every, steps=5, progress=False)
    train(
        _cfg("train.ckpt_every=2", "train.log_every=3"),
        tiny_phantom,
        sparse,
        steps=5,
        progress=False,
    )
    assert [r["step"] for r in _records(sparse)] == [1, 2, 3, 4, 5]
    assert _records(sparse) == _records(every)
    _assert_same_weights(_final(every), _final(sparse))


def test_steps_since_the_last_logging_point_reach_the_log_when_a_run_stops(tiny_phantom, tmp_path):
    """Ctrl-C (here raised from the on_step hook) between logging points: the steps done
    are written before the interrupt goes on (a resume would cut them at its checkpoint)."""
    seen = []

    def stop(step: int) -> None:
        seen.append(step)
        if step == 3:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    cfg = _cfg("train.log_every=5", "train.ckpt_every=10")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_phantom, run, steps=6, progress=False, on_step=stop)
    assert seen == [1, 2, 3]
    assert [r["step"] for r in _records(run)] == [1, 2, 3]
