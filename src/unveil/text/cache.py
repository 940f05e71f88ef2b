"""Each prompt encoded once per encoder, kept in memory and on disk.

The text encoder is frozen, so a prompt's embedding never changes; training calls
:meth:`EmbeddingCache.prefetch` on every prompt once and then only looks them up, and a
later run (or another rank) reads them back from disk.

On disk, ``cache_dir/<sha256(identity)[:16]>/<key[:2]>/<key>.safetensors`` where
``key = sha256(identity + NUL + text)``.  Files hold the prompt's unpadded tokens
``(L_i, E)`` and pooled vector ``(E_p,)``; the prompt text itself is not stored (it is
derived from clinical rows).  Writes are atomic, and a file that does not read back is
re-encoded with a warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unveil.conditioning import TextCondition
from unveil.fs import atomic_path, write_text
from unveil.text.encoders import EncodedText, TextEncoder

_FORMAT = "unveil-text-cache-v1"


class EmbeddingCache:
    """Memoised, disk-backed embeddings of one frozen encoder.

    Args:
        encoder: the frozen encoder; its :attr:`~TextEncoder.identity` keys every entry, so
            two encoders (or one with another ``max_length``) never share entries.
        cache_dir: folder for the on-disk cache, or None for memory only.
        batch_size: prompts per encoder call when filling the cache.

    Attributes:
        hits: prompts looked up (by :meth:`get` or :meth:`prefetch`) that were answered
            from memory or disk.
        misses: prompts that had to be encoded.
        disk_reads: hits answered from disk.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
    ):
        self.encoder = encoder
        self.identity = encoder.identity
        self.batch_size = batch_size
        self.folder: Path | None = None
        if cache_dir is not None:
            slug = hashlib.sha256(self.identity.encode("utf-8")).hexdigest()[:16]
            self.folder = Path(cache_dir) / slug
        # text -> (tokens (L_i, E), pooled (E_p,)) on the CPU.
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self.disk_reads = 0

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, text: str) -> bool:
        return text in self._memory

    def key(self, text: str) -> str:
        """The sha256 key of ``text`` under this encoder."""
        return hashlib.sha256(f"{self.identity}\x00{text}".encode()).hexdigest()

    def path(self, text: str) -> Path | None:
        """Where ``text``'s entry lives on disk (None without a cache folder)."""
        if self.folder is None:
            return None
        key = self.key(text)
        return self.folder / key[:2] / f"{key}.safetensors"

    def prefetch(self, texts: list[str]) -> None:
        """Make every prompt of ``texts`` available: read from disk or encode in batches."""
        unique = list(dict.fromkeys(texts))  # first-seen order
        self.hits += len(unique) - self._fill(unique)

    def get(self, texts: list[str]) -> EncodedText:
        """Embeddings of ``texts`` (B prompts), encoding any not seen yet.

        Returns tokens ``(B, L, E)`` padded to the longest prompt of the batch (at least 1),
        mask ``(B, L)`` and pooled ``(B, E_p)``, on the CPU.
        """
        texts = list(texts)
        # Every occurrence is a lookup; a prompt repeated in the batch is encoded once.
        self.hits += len(texts) - self._fill(list(dict.fromkeys(texts)))
        entries = [self._memory[t] for t in texts]
        if not entries:
            return EncodedText(
                torch.zeros(0, 1, self.encoder.width),
                torch.zeros(0, 1, dtype=torch.bool),
                torch.zeros(0, self.encoder.pooled_width),
            )
        lengths = torch.tensor([e[0].shape[0] for e in entries])
        length = max(1, int(lengths.max()))
        # pad_sequence pads to the longest entry; a batch of empty prompts still gets L=1.
        tokens = torch.nn.utils.rnn.pad_sequence([e[0] for e in entries], batch_first=True)
        if tokens.shape[1] < length:
            tokens = torch.nn.functional.pad(tokens, (0, 0, 0, length - tokens.shape[1]))
        mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
        pooled = torch.stack([e[1] for e in entries])
        return EncodedText(tokens, mask, pooled)

    def condition(self, texts: list[str], null: torch.Tensor | None = None) -> TextCondition:
        """:meth:`get` wrapped as a :class:`TextCondition` (``null``: ``(B,)`` bool or None)."""
        return self.get(texts).condition(null)

    # ----------------------------------------------------------------------------------

    def _fill(self, unique: list[str]) -> int:
        """Load or encode the prompts of ``unique`` not in memory; returns how many were encoded."""
        missing: list[str] = []
        for text in unique:
            if text in self._memory:
                continue
            if self._load(text):
                self.disk_reads += 1
            else:
                missing.append(text)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            encoded = self.encoder.encode(chunk)
            tokens = encoded.tokens.detach().float().cpu()
            mask = encoded.mask.cpu()
            pooled = encoded.pooled.detach().float().cpu()
            for i, text in enumerate(chunk):
                # Only the real tokens: lengths vary, padding is re-made on lookup.
                entry = (tokens[i][mask[i]].clone(), pooled[i].clone())
                self._memory[text] = entry
                self._store(text, *entry)
        self.misses += len(missing)
        return len(missing)

    def _store(self, text: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        path = self.path(text)
        if path is None:
            return
        if not (self.folder / "identity.txt").is_file():  # type: ignore[operator]
            # For a human looking at the folder; lookups never read it.
            write_text(self.folder / "identity.txt", self.identity + "\n")  # type: ignore[operator]
        with atomic_path(path) as tmp:
            save_file(
                {"tokens": tokens.contiguous(), "pooled": pooled.contiguous()},
                str(tmp),
                metadata={"format": _FORMAT, "identity": self.identity},
            )

    def _load(self, text: str) -> bool:
        path = self.path(text)
        if path is None or not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _FORMAT or meta.get("identity") != self.identity:
                    raise ValueError("it was written for another encoder or format")
                tokens = f.get_tensor("tokens").float()
                pooled = f.get_tensor("pooled").float()
            if tokens.ndim != 2 or tokens.shape[1] != self.encoder.width:
                raise ValueError(f"tokens have shape {tuple(tokens.shape)}")
            if pooled.shape != (self.encoder.pooled_width,):
                raise ValueError(f"pooled has shape {tuple(pooled.shape)}")
            if not (torch.isfinite(tokens).all() and torch.isfinite(pooled).all()):
                raise ValueError("it holds non-finite values")
        except Exception as err:  # a torn or foreign file must never stop training
            warnings.warn(
                f"text cache file {path} is unreadable ({err}); re-encoding that prompt.",
                stacklevel=3,
            )
            return False
        self._memory[text] = (tokens, pooled)
        return True
