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

import torch

from unveil import __version__
from unveil.errors import CheckpointError
from unveil.fs import atomic_path

FORMAT = "unveil-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def package_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint (what made it)."""
    import monai
    import numpy

    out = {
        "unveil": __version__,
        "torch": str(torch.__version__),
        "monai": str(monai.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }
    try:
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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and validate an unveil checkpoint (``weights_only=True``).

    Raises :class:`CheckpointError` with one sentence for a missing, corrupt, foreign or
    too-new file.
    """
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(
                f"{path} holds no ckpt-*.pt files; give a checkpoint file or a training run folder."
            )
        path = latest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip errors, unpickling refusals, truncation
        text = str(err)
        if "Unsupported global" in text:
            reason = "it holds Python objects, not only tensors and plain containers"
        elif "Weights only load failed" in text or "load key" in text or "zip" in text.lower():
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
