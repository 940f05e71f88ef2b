"""The loss log of a run: ``losses.jsonl``, one JSON record per training step.

:class:`_LossLog` keeps each step's losses as the family step returned them (tensors on
the device) until a logging point of the loop, then brings them to the host together,
checks them and appends them.  Appends are single writes followed by an ``fsync``, so a
crash can only cut the line being written; :func:`_truncate_jsonl` repairs the file (and
cuts what follows the checkpoint a run resumes from) before the next append, and
:func:`read_jsonl` reads it tolerantly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from unveil.errors import UnveilError
from unveil.fs import write_text

# The messages keep the logger name they had when these functions lived in the training
# loop's module, so logging configured (or filtered) by that name still applies.
log = logging.getLogger("unveil.train.loop")


class _LossLog:
    """Per-step loss values, kept as returned (tensors on the device) until :meth:`flush`.

    ``flush`` brings every pending step to the host in one transfer per device, checks
    that all values are finite, and (``path`` given: the main rank) appends one record per
    step to ``losses.jsonl`` with a single write and fsync.  Records of steps before a
    non-finite one are written; then :class:`UnveilError` names the first bad step.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[tuple[int, dict[str, torch.Tensor | float]]] = []

    def add(self, step: int, logs: dict[str, torch.Tensor | float]) -> None:
        self.pending.append((step, logs))

    def flush(self) -> list[dict[str, Any]]:
        """The host records of the pending steps, in order (``[]`` when none)."""
        if not self.pending:
            return []
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for _, logs in self.pending:
            for v in logs.values():
                if isinstance(v, torch.Tensor):
                    by_device.setdefault(v.device, []).append(v.reshape(()).to(torch.float64))
        host = {
            dev: iter(torch.stack(vals).tolist()) for dev, vals in by_device.items()
        }  # one device -> host copy (one sync) per device
        records = []
        for step, logs in self.pending:
            rec: dict[str, Any] = {"step": step}
            for k, v in logs.items():
                rec[k] = next(host[v.device]) if isinstance(v, torch.Tensor) else float(v)
            records.append(rec)
        self.pending = []
        bad = next(
            (i for i, r in enumerate(records) if not all(math.isfinite(r[k]) for k in r)), None
        )
        good = records if bad is None else records[:bad]
        if self.path is not None and good:
            _append_records(self.path, good)
        if bad is not None:
            step = records[bad]["step"]
            values = {k: v for k, v in records[bad].items() if k != "step"}
            raise UnveilError(
                f"training diverged at step {step} (loss {values}); lower the learning rate or "
                "use train.amp=none, then --resume from the last checkpoint."
            )
        return records


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, with a single ``write`` and an ``fsync``.

    A crash (kill -9, power loss, a full disk) can only cut the line being written; a
    resumed or restarted run repairs the file before it appends (:func:`_truncate_jsonl`).
    """
    _append_records(path, [record])


def _append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records, one line each, with a single ``write`` (looped only when the OS
    writes less) and one ``fsync``: a crash cuts at most the last line being written."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while data:  # os.write may write less than asked (a disk filling up)
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The loss records of a run's ``losses.jsonl``, read tolerantly.

    A line that is not a JSON record with an integer ``step`` is left out with a logged
    warning naming the file: the last line when a crash cut it, any other when the file
    was damaged.  Returns ``[]`` when the file does not exist.
    """
    records, _ = _read_jsonl(Path(path))
    return records


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """``(records, clean)``; ``clean`` is false when a line was dropped or the file does not
    end with a newline (the next append would run on from its last line)."""
    if not path.is_file():
        return [], True
    # Loss records are ASCII; "replace" keeps bytes a crash garbled from raising here.
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")  # not splitlines(): it also breaks at other control characters
    ends_cleanly = lines[-1] == ""
    if ends_cleanly:
        lines.pop()
    records: list[dict[str, Any]] = []
    clean = ends_cleanly
    for i, line in enumerate(lines):
        if not line.strip():
            clean = False
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and type(rec.get("step")) is int:
            records.append(rec)
            continue
        clean = False
        if i == len(lines) - 1:
            log.warning(
                "%s: dropped its last line (%.40r), cut short by an interrupted write (a "
                "crash or a full disk)",
                path,
                line,
            )
        else:
            log.warning(
                "%s: dropped line %d, which is not a JSON loss record (%.40r)", path, i + 1, line
            )
    return records, clean


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resumed run rewrites what follows).

    Also the repair after a crash: unreadable lines are dropped (with a warning) and the
    file is rewritten atomically, so the next append starts on a line of its own.
    """
    records, clean = _read_jsonl(path)
    keep = [r for r in records if r["step"] <= step]
    if clean and len(keep) == len(records):
        return
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
