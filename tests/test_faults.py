"""Fault suite: what a user sees when the machine or the input goes wrong.

Each test reproduces one failure a careful user (or an attacker) can cause and asserts the
outcome the README's reliability section promises: one sentence on stderr naming the file
or value and the fix, exit status 2, no traceback, and nothing half-written.  The training
kill -9 cases are in ``test_faults_train.py``, the generation ones in
``test_faults_generate.py`` and the table/CSV ones in ``test_faults_tables.py``.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from unveil.cli import main
from unveil.fs import FolderBusy, folder_lock, lock_path_for


def _one_line_error(capsys, code: int, expect_code: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expect_code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporaries (atomic writes, lock files) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- run lock


def test_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "cohort"
    with folder_lock(out, "unveil train"):
        code = main(["phantom", "--out", str(out), "--n", "4", "--size", "16"])
        line = _one_line_error(capsys, code)
    assert f"pid {os.getpid()} (unveil train)" in line
    assert "choose another output folder" in line
    assert not out.exists()  # the refused command wrote nothing
    # Released: the same command now runs, and leaves no lock file behind.
    assert main(["phantom", "--out", str(out), "--n", "4", "--size", "16"]) == 0
    assert _leftovers(tmp_path) == []


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from unveil.fs import folder_lock
                with folder_lock({str(out)!r}, "unveil train"):
                    print("held", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as busy, folder_lock(out, "unveil counterfactual"):
            pass
        assert f"pid {holder.pid}" in busy.value.holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 left the lock file, but the kernel released the lock with the process.
    assert lock_path_for(out).exists()
    with folder_lock(out, "unveil train"):
        pass
    assert not lock_path_for(out).exists()


def test_two_concurrent_trainings_on_one_folder(tiny_phantom, tmp_path):
    """The issue's reproduction: the second `unveil train` on the same --out exits 2."""
    run = tmp_path / "conc"
    cmd = [sys.executable, "-m", "unveil", "train", "--cohort", str(tiny_phantom)]
    first = subprocess.Popen(
        [*cmd, "--config", "tiny-gan", "--out", str(run), "--steps", "400", "--no-progress"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not lock_path_for(run).exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(
            [*cmd, "--config", "tiny-diffusion", "--out", str(run), "--steps", "8"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid} (unveil train)" in second.stderr
    assert "Traceback" not in second.stderr


def test_torchrun_ranks_other_than_zero_do_not_lock(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cohort"
    monkeypatch.setenv("RANK", "1")
    with folder_lock(tmp_path / "other", "x"):
        assert main(["phantom", "--out", str(out), "--n", "4", "--size", "16"]) == 0
    assert not lock_path_for(out).exists()


# ------------------------------------------------------- operating-system errors


def _limit_file_size(limit: int):
    """preexec_fn: writes beyond ``limit`` bytes fail with EFBIG, as on a full disk."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run_cli(args: list[str], limit: int | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "unveil", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        preexec_fn=_limit_file_size(limit) if limit else None,
    )


def test_disk_full_while_writing_a_phantom(tmp_path):
    # A real failed write (the kernel refuses bytes past the limit), half-way into a volume.
    out = tmp_path / "ph"
    res = _run_cli(["phantom", "--out", str(out), "--n", "4", "--size", "32"], limit=4000)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]  # above it: the progress bar
    assert "Traceback" not in res.stderr, res.stderr
    assert last.startswith("unveil phantom: error: the file system refused the write")
    assert str(out) in last and "--out" in last
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_disk_full_while_writing_a_checkpoint(tiny_phantom, tmp_path):
    """torch.save's RuntimeError (inline_container.cc) becomes the same kind of sentence."""
    run = tmp_path / "run"
    res = _run_cli(
        [
            "train",
            "--config",
            "tiny-gan",
            "--cohort",
            str(tiny_phantom),
            "--out",
            str(run),
            "--steps",
            "2",
            "--no-progress",
        ],
        limit=60_000,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("unveil train: error:"), res.stderr
    assert "--resume" in last or "free space" in last
    ckdir = run / "checkpoints"
    if ckdir.exists():  # no partial checkpoint under its final name, no temporaries
        for p in ckdir.iterdir():
            assert not p.name.startswith("."), p


@pytest.mark.parametrize(
    "command",
    [
        ["phantom", "--n", "4", "--size", "16"],
        ["demo", "--n", "40", "--steps", "1"],
    ],
)
def test_read_only_output(tmp_path, monkeypatch, capsys, command):
    # As root a chmod does not stop writes, so the file system's answer is reproduced.
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code = main([*command, "--out", str(ro / "out")])
    line = _one_line_error(capsys, code)
    assert "read-only" in line and str(ro) in line


def test_os_error_sentences():
    from unveil.errors import describe_os_error, describe_write_failure

    full = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "runs/a")
    assert "runs/a" in full and "free space" in full
    perm = describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert "/x/y" in perm and "permission" in perm
    msg = describe_write_failure(
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"), "r"
    )
    assert msg and "--resume" in msg
    assert describe_write_failure(RuntimeError("shape mismatch"), "r") is None


# ------------------------------------------------------------- bad values


def test_config_that_is_not_utf8(tmp_path, tiny_phantom, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"model:\n  family: gan\n# caf\xe9 \xff\xfe\n")
    code = main(
        ["train", "--config", str(cfg), "--cohort", str(tiny_phantom), "--out", str(tmp_path / "r")]
    )
    line = _one_line_error(capsys, code)
    assert str(cfg) in line and "UTF-8" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", "-1"], "--seed"),
        (["--size", "4096"], "--size 4096"),
        (["--size", "12"], "--size 12"),
        (["--n", "2"], "--n 2"),
    ],
)
def test_phantom_arguments(tmp_path, capsys, args, needle):
    out = tmp_path / "ph"
    try:
        code = main(["phantom", "--out", str(out), *args])
    except SystemExit as ex:  # argparse's own refusal (a type check), also exit 2
        code = ex.code
    line = _one_line_error(capsys, code)
    assert needle in line
    assert not out.exists()


def test_analyze_map_limit_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        main(["analyze", str(tmp_path), "--map-limit", "-5"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no usage block
    assert "--map-limit: -5 must be a finite number above 0" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--n", "12"], "held-out"), (["--seeds", "0"], "--seeds 0"), (["--steps", "0"], "--steps 0")],
)
def test_demo_validates_before_building(tmp_path, capsys, args, needle):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    code = main(["demo", "--out", str(out), *args, "--no-progress"])
    line = _one_line_error(capsys, code)
    assert needle in line
    assert not out.exists()
    assert time.perf_counter() - t0 < 60  # refused before the phantom and the training


def test_lock_file_is_beside_not_inside(tmp_path):
    out = tmp_path / "x"
    with folder_lock(out, "unveil analyze") as lock:
        assert lock.parent == tmp_path and lock.name == ".x.unveil-lock"
        assert json.dumps(lock.read_text()).startswith('"pid ')
