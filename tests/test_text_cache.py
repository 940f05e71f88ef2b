"""Embedding cache: encode once, reuse from memory and disk, survive corrupt files."""

from __future__ import annotations

import warnings

import pytest
import torch

from unveil.conditioning import TextCondition
from unveil.text.cache import EmbeddingCache
from unveil.text.encoders import EncodedText, FeaturesEncoder

PROMPTS = [
    "Lung CT scan: diagnosis is IPF. Age 76. Female. Never smoker.",
    "Lung CT scan: Age 50.",
    "Lung CT scan: diagnosis is CTD-ILD. Age 63. Male. Current smoker. Pack-years: 40.",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class CountingEncoder(FeaturesEncoder):
    """The features encoder, counting the prompts it is asked to encode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoded: list[str] = []

    def encode(self, texts: list[str]) -> EncodedText:
        self.encoded.extend(texts)
        return super().encode(texts)


def assert_same_as_direct(got: EncodedText, texts: list[str]) -> None:
    direct = FeaturesEncoder().encode(texts)
    assert torch.equal(got.mask, direct.mask)
    torch.testing.assert_close(got.tokens, direct.tokens)
    torch.testing.assert_close(got.pooled, direct.pooled)


def test_memory_hits_and_misses():
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder, None, batch_size=2)
    cache.prefetch([*PROMPTS, PROMPTS[0]])
    assert cache.misses == 3 and cache.hits == 0
    assert sorted(encoder.encoded) == sorted(PROMPTS)  # each unique prompt once
    batch = [PROMPTS[1], PROMPTS[0], PROMPTS[1]]
    got = cache.get(batch)
    assert cache.hits == 3 and cache.misses == 3 and len(encoder.encoded) == 3
    # variable lengths: padded to the longest of this batch, values equal a direct encode
    assert got.mask.sum(1).tolist() == [5, 11, 5] and got.tokens.shape == (3, 11, 64)
    assert_same_as_direct(got, batch)
    # get without prefetch encodes what is missing, once per unique prompt
    new = ["Age 20.", "Age 20.", PROMPTS[2]]
    cache.get(new)
    assert cache.misses == 4 and cache.hits == 5 and encoder.encoded[-1] == "Age 20."
    cond = cache.condition(new, null=torch.tensor([False, True, False]))
    assert isinstance(cond, TextCondition) and cond.null.tolist() == [False, True, False]


def test_disk_reuse_by_a_new_cache(tmp_path):
    first = EmbeddingCache(CountingEncoder(), tmp_path)
    first.prefetch(PROMPTS)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 3
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporaries left
    # the prompt text is not written to disk (it comes from clinical rows)
    assert all(b"smoker" not in f.read_bytes() for f in files)

    encoder = CountingEncoder()
    second = EmbeddingCache(encoder, tmp_path)
    got = second.get(PROMPTS)
    assert encoder.encoded == [] and second.misses == 0
    assert second.hits == 3 and second.disk_reads == 3
    assert_same_as_direct(got, PROMPTS)

    # another encoder identity never reads these entries
    other = CountingEncoder(width=32)
    third = EmbeddingCache(other, tmp_path)
    third.prefetch(PROMPTS)
    assert third.misses == 3 and third.disk_reads == 0 and third.get(PROMPTS).tokens.shape[2] == 32


def test_corrupt_file_is_re_encoded_with_a_warning(tmp_path):
    EmbeddingCache(FeaturesEncoder(), tmp_path).prefetch(PROMPTS)
    encoder = CountingEncoder()
    cache = EmbeddingCache(encoder, tmp_path)
    broken = cache.path(PROMPTS[1])
    broken.write_bytes(b"\x00garbage, not safetensors")
    with pytest.warns(UserWarning, match="unreadable"):
        got = cache.get(PROMPTS)
    assert encoder.encoded == [PROMPTS[1]] and cache.misses == 1 and cache.disk_reads == 2
    assert_same_as_direct(got, PROMPTS)
    # the file was rewritten: a fresh cache reads it without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = EmbeddingCache(CountingEncoder(), tmp_path)
        fresh.prefetch(PROMPTS)
    assert fresh.misses == 0


def test_empty_prompt_and_empty_batch(tmp_path):
    cache = EmbeddingCache(FeaturesEncoder(), tmp_path)
    got = cache.get(["", "Age 40."])
    assert got.tokens.shape == (2, 2, 64) and got.mask.sum(1).tolist() == [0, 2]
    assert torch.all(got.pooled[0] == 0)
    again = EmbeddingCache(FeaturesEncoder(), tmp_path).get([""])
    assert again.tokens.shape == (1, 1, 64) and not again.mask.any()
    empty = cache.get([])
    assert empty.tokens.shape == (0, 1, 64) and empty.pooled.shape == (0, 64)
