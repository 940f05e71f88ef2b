"""Preprocessed training volumes on disk, read a patch at a time.

A cohort whose preprocessed volumes do not fit ``data.memory_budget_gb`` is written once
to an on-disk cache (``RUN/data-cache``): per subject the image ``(1, X, Y, Z)`` and the
mask ``(M, X, Y, Z)`` as float32 ``.npy`` files, plus a small JSON record written last (an
entry without it is incomplete and is written again).  Training then reads them through
memory maps (``numpy.load(mmap_mode="r")``): :class:`MappedVolume` hands
:class:`unveil.data.patches.PatchSampler` what it indexes, and a patch is copied out of
the map, so only the pages of that patch are read and the process holds no volume.  The
values are the very float32 numbers the in-memory path holds, so the sampler draws the
same patches from the same random stream and a streamed run trains to the same weights.

Entries are named by a hash of everything that decides their content: this format's
version, unveil's version, the config sections that preprocessing reads (``preprocess``
and ``data`` without the fields that only sampling or bookkeeping use) and the identity of
the two source files (resolved path, size, modification time).  A changed setting or a
rewritten file therefore gives another name, and a stale entry is never read.  Files are
written atomically (:mod:`unveil.fs`), so processes writing the same entry at once (DDP
ranks) or a kill mid-write leave either a complete entry or none.

Why memory maps and not MONAI's ``PersistentDataset``: ``PersistentDataset`` stores each
transformed item with ``torch.save`` and ``torch.load``-s the whole item on every access,
then crops; a memory map reads the patch.  Measured on this project's 2-core CPU
(2026-12-04, ``python benchmarks/train_loop.py --patch-read 128``): a 128^3 phantom
subject preprocessed by the demo config (image + 5-channel mask, 50 MB float32), one
64x64x32 patch (3.1 MB), warm page cache: memory map 0.55 ms per patch,
``PersistentDataset`` 24.0 ms (44x slower: it reads 50 MB to keep 3 MB, and the gap grows
with the size of the volume), in memory 0.44 ms.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unveil import __version__
from unveil.fs import atomic_path, write_json

if TYPE_CHECKING:
    from unveil.config import Config

#: Bumped whenever what an entry holds changes: old entries then get other names.
CACHE_FORMAT = 1

#: Config fields that do not change what ``Preprocessor.prepare`` returns (sampling and
#: bookkeeping).  Every other field of the two sections is part of an entry's name, so a
#: field added later invalidates the cache rather than being ignored.
_NOT_PREPROCESSING = {
    "preprocess": {"patch_size", "pos_fraction"},
    "data": {"id_column", "table", "memory_budget_gb"},
}


def preprocessing_identity(cfg: Config) -> dict[str, Any]:
    """The config values that decide a preprocessed volume (see ``_NOT_PREPROCESSING``)."""
    out = {}
    for section, skip in _NOT_PREPROCESSING.items():
        dump = getattr(cfg, section).model_dump(mode="json")
        out[section] = {k: v for k, v in dump.items() if k not in skip}
    return out


def source_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Resolved path, size and modification time (ns) of a source file."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def entry_key(cfg: Config, image: str | os.PathLike, mask: str | os.PathLike) -> str:
    """The name of the cache entry of one subject (a hex digest; no subject id in it)."""
    ident = {
        "format": CACHE_FORMAT,
        "unveil": __version__,
        "config": preprocessing_identity(cfg),
        "image": source_identity(image),
        "mask": source_identity(mask),
    }
    blob = json.dumps(ident, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:40]


class _OpenMaps:
    """Memory maps kept open, least recently used closed first.

    Opening a map costs ~0.13 ms (measured), as much as copying a 64x64x32 patch out of
    it, so maps stay open; the bound keeps file descriptors (one per map) well under the
    usual limit of 1024 for cohorts of thousands of subjects.
    """

    def __init__(self, max_open: int = 128) -> None:
        self.max_open = max_open
        self._maps: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path) -> np.ndarray:
        arr = self._maps.get(path)
        if arr is None:
            arr = np.load(path, mmap_mode="r")
            self._maps[path] = arr
            while len(self._maps) > self.max_open:
                self._maps.popitem(last=False)  # dropping the map closes it
        else:
            self._maps.move_to_end(path)
        return arr


class MappedVolume:
    """A ``(C, X, Y, Z)`` float32 volume in a ``.npy`` file, indexed like a torch tensor.

    ``vol[key]`` reads only what ``key`` selects and returns it as a new torch tensor (a
    copy: the map itself is read-only, and ``torch.from_numpy`` needs a writable array).
    ``shape`` and ``ndim`` are known without reading the data.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], maps: _OpenMaps) -> None:
        self.path = Path(path)
        self._shape = tuple(int(s) for s in shape)
        self._maps = maps

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._shape)) * 4

    def __getitem__(self, key: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(self._maps.get(self.path)[key]))

    def __repr__(self) -> str:
        return f"MappedVolume({self.path.name}, shape={self._shape})"


@dataclass
class StreamedPrepared:
    """What training uses of :class:`unveil.data.preprocess.Prepared`, read from disk.

    Holds no label map, affine or transform record: patch sampling needs ``image`` and
    ``mask`` alone (validation keeps its subject in memory).
    """

    image: MappedVolume
    mask: MappedVolume

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    def in_memory(self) -> HeldPrepared:
        """The same volumes read whole into memory."""
        return HeldPrepared(self.image[:], self.mask[:])


@dataclass
class HeldPrepared:
    """``image`` and ``mask`` of a cached subject, read whole into memory (tensors)."""

    image: torch.Tensor
    mask: torch.Tensor


class VolumeCache:
    """The on-disk cache of preprocessed volumes in ``folder`` (see the module docstring).

    ``hits`` and ``writes`` count what :meth:`get` found and :meth:`put` wrote.
    """

    def __init__(self, folder: str | os.PathLike, max_open: int = 128) -> None:
        self.folder = Path(folder)
        self._maps = _OpenMaps(max_open)
        self.hits = 0
        self.writes = 0

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return (
            self.folder / f"{key}.image.npy",
            self.folder / f"{key}.mask.npy",
            self.folder / f"{key}.json",
        )

    def get(self, key: str) -> tuple[StreamedPrepared, dict[str, Any]] | None:
        """The entry ``key`` and its record, or None when there is no complete entry."""
        img_p, msk_p, rec_p = self._paths(key)
        try:
            record = json.loads(rec_p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("format") != CACHE_FORMAT or not (img_p.is_file() and msk_p.is_file()):
            return None
        self.hits += 1
        return self._open(key, record), record

    def put(
        self, key: str, image: torch.Tensor, mask: torch.Tensor, **extra: Any
    ) -> StreamedPrepared:
        """Write one subject's preprocessed ``image`` and ``mask`` (float32 tensors) as entry
        ``key``, with ``extra`` (JSON values) in its record; returns the entry, mapped."""
        img_p, msk_p, rec_p = self._paths(key)
        shapes = {}
        for path, t, name in ((img_p, image, "image"), (msk_p, mask, "mask")):
            arr = np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            shapes[name] = list(arr.shape)
        record = {"format": CACHE_FORMAT, "shape": shapes, **extra}
        write_json(rec_p, record)  # last: its presence marks the entry complete
        self.writes += 1
        return self._open(key, record)

    def _open(self, key: str, record: dict[str, Any]) -> StreamedPrepared:
        img_p, msk_p, _ = self._paths(key)
        return StreamedPrepared(
            MappedVolume(img_p, tuple(record["shape"]["image"]), self._maps),
            MappedVolume(msk_p, tuple(record["shape"]["mask"]), self._maps),
        )
