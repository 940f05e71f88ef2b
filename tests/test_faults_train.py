"""Training survives faults: kill -9 at any point (inside a checkpoint write included) and
``--resume`` ends with the weights and loss log of an uninterrupted run; a loss log cut by
a crash, ``--steps 0``, images not in HU and checkpoints that carry code get one sentence
(or a warning) instead of a traceback or a silent wrong result."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unveil.cli import main
from unveil.errors import CheckpointError
from unveil.runtime.checkpoint import list_checkpoints, load_checkpoint
from unveil.train.loop import _append_jsonl, _truncate_jsonl, read_jsonl

FAST = ["train.val_every=1000", "train.log_every=1"]

# Runs `unveil` with torch.save patched to die by SIGKILL while writing one checkpoint:
# UNVEIL_TEST_KILL_IN_SAVE="<step>:<mode>", mode "empty" (the temporary file exists, nothing
# in it), "half" (half of the bytes written) or "full" (written, not yet renamed into place).
WRAPPER = """
import os, signal, sys

spec = os.environ.get("UNVEIL_TEST_KILL_IN_SAVE")
if spec:
    import io
    import torch

    step, mode = spec.split(":")
    target = f"ckpt-{int(step):08d}.pt."
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if target in os.path.basename(str(f)):
            if mode == "half":
                buf = io.BytesIO()
                original(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                with open(f, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
            elif mode == "full":
                original(obj, f, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(obj, f, *args, **kwargs)

    torch.save = save

from unveil.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _train_args(cohort: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        "tiny-gan",
        "--cohort",
        str(cohort),
        "--out",
        str(run),
        "--steps",
        str(steps),
        "--no-progress",
        *FAST,
        *extra,
    ]


def _one_line(err: str) -> None:
    assert "Traceback" not in err and err.count("\n") == 1, err


def _hidden(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*")]


# ------------------------------------------------------------------- kill -9 anywhere


class _Launcher:
    def __init__(self, tmp: Path, cohort: Path, steps: int) -> None:
        self.wrapper = tmp / "kill_wrapper.py"
        self.wrapper.write_text(WRAPPER)
        self.cohort, self.steps, self.logs = cohort, steps, tmp
        self.n = 0

    def start(self, run: Path, resume: bool, kill_in_save: str | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYTHONWARNINGS"] = "ignore"
        env.pop("UNVEIL_TEST_KILL_IN_SAVE", None)
        if kill_in_save:
            env["UNVEIL_TEST_KILL_IN_SAVE"] = kill_in_save
        extra = ["train.ckpt_every=1", *(["--resume"] if resume else [])]
        cmd = [
            sys.executable,
            str(self.wrapper),
            *_train_args(self.cohort, run, self.steps, *extra),
        ]
        self.n += 1
        log = open(self.logs / f"launch-{self.n}.log", "w+")  # noqa: SIM115 - read after exit
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log

    @staticmethod
    def until_killed(proc_log, trigger=None, timeout: float = 240.0) -> str:
        """Wait until ``trigger()`` is true, SIGKILL the process, check it died of it;
        returns what it printed."""
        proc, log = proc_log
        end = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < end:
            if trigger is not None and trigger():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        try:
            proc.wait(timeout=max(end - time.monotonic(), 1))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == -signal.SIGKILL, f"not killed (rc {proc.returncode}):\n{out}"
        return out

    @staticmethod
    def finish(proc_log) -> str:
        proc, log = proc_log
        proc.wait(timeout=300)
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == 0, out[-3000:]
        return out


def _n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(tiny_phantom, tmp_path):
    steps = 10
    go = _Launcher(tmp_path, tiny_phantom, steps)
    ref, run = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted run goes alongside on the other core.
    reference = go.start(ref, resume=False)
    ckdir = run / "checkpoints"

    # 1. between steps, as soon as the second checkpoint is in place
    go.until_killed(go.start(run, False), lambda: (ckdir / "ckpt-00000002.pt").exists())
    # 2. inside the write of checkpoint 4: half its bytes in the temporary file
    go.until_killed(go.start(run, True, kill_in_save="4:half"))
    assert [p for p in ckdir.iterdir() if p.name.startswith(".ckpt-00000004.pt.")]
    assert not (ckdir / "ckpt-00000004.pt").exists()
    # 3. a second after starting (while it sets up)
    t0 = time.monotonic()
    go.until_killed(go.start(run, True), lambda: time.monotonic() - t0 > 1.0)
    # 4. inside the write of checkpoint 5, before a byte of it is written
    out = go.until_killed(go.start(run, True, kill_in_save="5:empty"))
    assert "left by a checkpoint write that was interrupted" in out
    assert not (ckdir / "ckpt-00000005.pt").exists()
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".ckpt-00000004.pt.")]
    # 5. mid-step: once step 7 is logged, before or while its checkpoint is written
    out = go.until_killed(go.start(run, True), lambda: _n_lines(run / "losses.jsonl") >= 7)
    assert "left by a checkpoint write that was interrupted" in out
    # 6. checkpoint 8 completely written to its temporary file, not yet renamed
    go.until_killed(go.start(run, True, kill_in_save="8:full"))
    assert not (ckdir / "ckpt-00000008.pt").exists()
    out = go.finish(go.start(run, True))
    assert "left by a checkpoint write that was interrupted" in out
    assert "last checkpoint:" in out and "ckpt-00000010.pt" in out
    go.finish(reference)

    # The weights (every module, optimiser moments and EMA too) equal the uninterrupted run's.
    a = load_checkpoint(list_checkpoints(ref)[-1])
    b = load_checkpoint(list_checkpoints(run)[-1])
    assert a["step"] == b["step"] == steps
    for part in ("models", "ema"):
        wa, wb = a[part], b[part]
        for name in wa:
            sa, sb = wa[name], wb[name]
            if isinstance(sa, torch.Tensor):
                assert torch.equal(sa, sb), f"{part}.{name}"
                continue
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{part}.{name}"
    # The loss log is intact: one record per step, in order, equal to the reference.
    lines = (run / "losses.jsonl").read_text().split("\n")
    assert lines[-1] == ""
    records = [json.loads(ln) for ln in lines[:-1]]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    ref_records = [json.loads(ln) for ln in (ref / "losses.jsonl").read_text().splitlines()]
    assert records == ref_records
    # No temporary file is left anywhere in the run folder.
    assert _hidden(run) == []


# ------------------------------------------------------------------ the loss log


def test_losses_log_cut_by_a_crash_resume_and_fresh_start_work(tiny_phantom, tmp_path, caplog):
    run = tmp_path / "run"
    assert main(_train_args(tiny_phantom, run, 2)) == 0
    log_path = run / "losses.jsonl"
    good = log_path.read_text()
    # A crash (a full disk) while step 3 was being appended cut its line.
    with open(log_path, "a") as fh:
        fh.write('{"step": 3, "loss_g": 0.12')
    caplog.set_level(logging.WARNING, logger="unveil.train.loop")
    assert main(_train_args(tiny_phantom, run, 3, "--resume")) == 0
    assert any(
        "dropped its last line" in r.getMessage() and str(log_path) in r.getMessage()
        for r in caplog.records
    )
    records = [json.loads(ln) for ln in log_path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert log_path.read_text().startswith(good)

    # A run killed before its first checkpoint, restarted without --resume.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "losses.jsonl").write_text(good + '{"step": 3, "lo')
    caplog.clear()
    assert main(_train_args(tiny_phantom, fresh, 1)) == 0
    assert any("dropped its last line" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in read_jsonl(fresh / "losses.jsonl")] == [1]


def test_losses_log_repair_drops_bad_lines_and_ends_each_record(tmp_path, caplog):
    path = tmp_path / "losses.jsonl"
    caplog.set_level(logging.WARNING, logger="unveil.train.loop")
    path.write_text('{"step": 1, "loss": 1.0}\n\x00\x00garbage\n{"step": 2, "loss": 0.5}\n{"st')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    messages = [r.getMessage() for r in caplog.records]
    assert any("dropped line 2" in m and str(path) in m for m in messages)
    assert any("dropped its last line" in m and str(path) in m for m in messages)
    _truncate_jsonl(path, 5)
    _append_jsonl(path, {"step": 3, "loss": 0.25})
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3]
    # A record complete but for its newline is kept, and the next one starts a new line.
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}')
    _truncate_jsonl(path, 2)
    _append_jsonl(path, {"step": 3, "loss": 0.25})
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3]
    # Records beyond the checkpoint go; a clean file within it is not rewritten.
    _truncate_jsonl(path, 2)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    before = path.stat().st_mtime_ns
    _truncate_jsonl(path, 2)
    assert path.stat().st_mtime_ns == before


# ------------------------------------------------------------------ --steps 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--steps", "0"], "--steps is 0"),
        (["--steps", "-2"], "--steps is -2"),
        (["--steps", "0", "--resume"], "--steps is 0"),
        (["train.steps=0"], "train.steps is 0"),
    ],
)
def test_no_steps_is_refused_before_anything_is_written(
    tiny_phantom, tmp_path, capsys, args, fragment
):
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        "tiny-gan",
        "--cohort",
        str(tiny_phantom),
        "--out",
        str(run),
        "--no-progress",
        *args,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert fragment in err and "at least 1 step" in err
    assert not run.exists()


# ------------------------------------------------------------------ images not in HU


def _stored_values_cohort(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose images hold DICOM stored values (HU + 1024, 0..4095)."""
    from unveil.data.io import Volume, read_volume, write_volume

    shutil.copytree(src, dst)
    for path in sorted((dst / "images").iterdir()):
        vol = read_volume(path, dtype=np.float32)
        stored = np.clip(vol.array + 1024.0, 0, 4095).astype(np.float32)
        write_volume(Volume(stored, vol.affine, path), path)
    return dst


def test_images_not_in_hu_are_refused_unless_allowed(tiny_phantom, tmp_path, capsys):
    cohort = _stored_values_cohort(tiny_phantom, tmp_path / "cohort")
    run = tmp_path / "run"
    assert main(_train_args(cohort, run, 1)) == 2
    err = capsys.readouterr().err
    _one_line(err)
    first = json.loads((run / "splits.json").read_text())["splits"]["train"][0]
    named = next(p for p in (cohort / "images").iterdir() if p.name.startswith(first + "."))
    assert str(named) in err
    assert "rescale intercept" in err and "--allow-non-hu" in err
    assert list_checkpoints(run) == []
    assert main(_train_args(cohort, run, 1, "--allow-non-hu")) == 0
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000001.pt"]


# ------------------------------------------------------------------ checkpoints


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_carrying_code_is_refused_as_such(tmp_path, capsys, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "ckpt-00000001.pt"
    payload = {"format": "unveil-checkpoint", "step": 1, "hook": _RunsCode(marker)}
    if legacy:  # a plain pickle stream, as torch.save wrote before its zip format
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} contains executable objects (global posix.system)")
    assert "only load checkpoints from sources you trust" in msg
    assert "unveil never needs weights_only=False" in msg
    assert not marker.exists()
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    _one_line(err)
    assert "executable objects" in err
    assert not marker.exists()


def test_truncated_and_empty_checkpoints_keep_the_corrupt_wording(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"format": "unveil-checkpoint", "w": torch.zeros(64)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (cut, empty):
        with pytest.raises(CheckpointError, match="truncated, overwritten or not a PyTorch file"):
            load_checkpoint(path)


def test_temporary_checkpoint_files_are_removed_at_the_next_start(tiny_phantom, tmp_path, caplog):
    run = tmp_path / "run"
    assert main(_train_args(tiny_phantom, run, 1)) == 0
    ckdir = run / "checkpoints"
    # What kill -9 during a checkpoint write leaves (atomic_path's hidden sibling) ...
    empty = ckdir / ".ckpt-00000002.pt.k3x_9a1q.pt"
    empty.write_bytes(b"")
    partial = ckdir / ".ckpt-00000002.pt.0abcdefg.pt"
    partial.write_bytes(b"PK\x03\x04 half a checkpoint")
    # ... and what is not to be touched.
    keep = [ckdir / ".notes", ckdir / "ckpt-00000001.pt.bak", ckdir / ".ckpt-1.pt.x.pt"]
    for p in keep:
        p.write_bytes(b"mine")
    caplog.set_level(logging.INFO, logger="unveil.train.loop")
    assert main(_train_args(tiny_phantom, run, 2, "--resume")) == 0
    assert not empty.exists() and not partial.exists()
    assert all(p.read_bytes() == b"mine" for p in keep)
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-00000001.pt", "ckpt-00000002.pt"]
    removed = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(str(empty) in m and "interrupted" in m for m in removed)
    assert any(str(partial) in m for m in removed)
