"""Checkpoints: one dict holding everything needed to rebuild and resume.

A checkpoint is a ``torch.save`` of plain containers and tensors only, so it loads with
``torch.load(..., weights_only=True)`` (no pickled code runs on load).  It holds the config
that built the models, package versions, the step, the unwrapped modules' state dicts,
optimiser, EMA and RNG states, and the text setup (template content and encoder
identity) so that inference can refuse a mismatched template or encoder.  Raw clinical
rows and subject ids are never stored.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import monai
import numpy
import torch

from unveil import __version__
from unveil.errors import CheckpointError
from unveil.fs import atomic_path

FORMAT = "unveil-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
# atomic_path's temporary sibling of ckpt-<step>.pt (tempfile adds 8 of [a-z0-9_]).
_TEMP_NAME = re.compile(r"^\.ckpt-\d{8}\.pt\.[A-Za-z0-9_]+\.pt$")


def package_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint (what made it)."""
    out = {
        "unveil": __version__,
        "torch": str(torch.__version__),
        "monai": str(monai.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }
    try:
        # lazy transformers (~1 s): only its version is recorded here
        import transformers

        out["transformers"] = str(transformers.__version__)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return out


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus format markers and versions) to ``path``."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": package_versions(),
        **payload,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a training run folder its newest ``ckpt-*.pt``."""
    path = Path(path)
    if not path.is_dir():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(
            f"{path} holds no ckpt-*.pt files; give a checkpoint file or a training run folder."
        )
    return latest


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and validate an unveil checkpoint (``weights_only=True``).

    Raises :class:`CheckpointError` with one sentence for a missing, corrupt, foreign or
    too-new file, and for one that carries code (pickled functions or classes, which
    ``weights_only`` refuses to import: nothing in the file runs).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip errors, unpickling refusals, truncation
        text = str(err)
        code = _executable_global(text)
        if code is not None:
            what = f" ({code})" if code else ""
            raise CheckpointError(
                f"{path} contains executable objects{what} and was not loaded; only load "
                "checkpoints from sources you trust; unveil never needs weights_only=False."
            ) from None
        if (
            isinstance(err, EOFError)  # an empty or cut file
            or "Weights only load failed" in text
            or "load key" in text
            or "zip" in text.lower()
        ):
            reason = "the file is truncated, overwritten or not a PyTorch file"
        else:
            reason = text.splitlines()[0][:120] if text else type(err).__name__
        raise CheckpointError(
            f"{path} is corrupt or not a PyTorch checkpoint unveil can load safely ({reason}); "
            "use a ckpt-*.pt file written by `unveil train`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an unveil checkpoint (no '{FORMAT}' marker); use a ckpt-*.pt file "
            "written by `unveil train`."
        )
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer unveil (format {payload['format_version']}); upgrade unveil."
        )
    for key in ("config", "step", "models"):
        if key not in payload:
            raise CheckpointError(
                f"{path} lacks '{key}'; it is incomplete, use another checkpoint."
            )
    return payload


# What torch's weights-only unpickler says when a pickle asks for a function or class it
# will not import (``os.system`` pickles as ``posix.system``) or call: code, not data.
_GLOBAL = re.compile(r"GLOBAL (\S+?)(?: was not an allowed| whose module|\s*$)", re.MULTILINE)
_CODE_HINTS = (
    "Unsupported global",
    "unsupported GLOBAL",
    "call reduce for unrecognized function",
    "Can only create new object",
    "Can only build Tensor",
)


def _executable_global(text: str) -> str | None:
    """``None`` unless a ``weights_only`` refusal is about code in the pickle; then the
    global it names (``"global posix.system"``), or ``""`` when the message names none."""
    if not any(hint in text for hint in _CODE_HINTS):
        return None
    m = _GLOBAL.search(text)
    return f"global {m.group(1)}" if m else ""


def is_temporary_checkpoint(name: str) -> bool:
    """Whether ``name`` is the hidden temporary file of an unfinished checkpoint write.

    :func:`save_checkpoint` writes ``.ckpt-<step>.pt.<random>.pt`` next to the checkpoint
    (:func:`unveil.fs.atomic_path`) and renames it into place; a process killed meanwhile
    leaves it behind.  Real checkpoints never match.
    """
    return _TEMP_NAME.match(name) is not None


def remove_temporary_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of unfinished checkpoint writes in a run folder's
    ``checkpoints/``; returns what was deleted.  Only call it while no other process
    writes checkpoints there."""
    folder = Path(folder) / "checkpoints"
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if is_temporary_checkpoint(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoints in a run folder's ``checkpoints/`` (or the folder itself), oldest first."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir():
        folder = folder / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(folder: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns what was deleted."""
    ckpts = list_checkpoints(folder)
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
