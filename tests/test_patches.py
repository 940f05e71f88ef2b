"""Patch sampling: shapes, foreground rate, uniformity, padding, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from unveil.data.patches import PatchSampler

PATCH = (4, 4, 4)


def _subject(shape=(12, 10, 8), blob=((9, 12), (7, 10), (5, 8)), channels=2):
    """Image ramp in [-1, 1] and a mask whose channel 0 is a small blob in a corner."""
    img = torch.linspace(-1, 1, int(np.prod(shape))).reshape(1, *shape)
    mask = torch.zeros(channels, *shape)
    (x0, x1), (y0, y1), (z0, z1) = blob
    mask[0, x0:x1, y0:y1, z0:z1] = 1
    if channels > 1:
        mask[1, :2, :2, :2] = 1  # a second structure, not foreground when fg_channels=[0]
    return img, mask


def _sampler(pos_fraction, seed=0, n=2, fg_channels=(0,)):
    subjects = [_subject() for _ in range(n)]
    return PatchSampler(
        [s[0] for s in subjects],
        [s[1] for s in subjects],
        PATCH,
        pos_fraction,
        np.random.default_rng(seed),
        fg_channels=list(fg_channels),
    )


def test_shapes_and_content():
    img, mask = _subject()
    s = PatchSampler([img], [mask], PATCH, 0.5, np.random.default_rng(1))
    out = s.sample(5)
    assert out["image"].shape == (5, 1, *PATCH) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (5, 2, *PATCH)
    assert out["index"].shape == (5,) and out["index"].dtype == torch.int64
    # each patch is exactly the slice at its reported start
    for b in range(5):
        x, y, z = out["start"][b].tolist()
        torch.testing.assert_close(out["image"][b], img[:, x : x + 4, y : y + 4, z : z + 4])
        torch.testing.assert_close(out["mask"][b], mask[:, x : x + 4, y : y + 4, z : z + 4])


def test_pos_fraction_one_always_hits_the_foreground():
    s = _sampler(1.0)
    out = s.sample(200)
    assert bool(out["positive"].all())
    assert bool((out["mask"][:, 0].flatten(1).amax(1) == 1).all())
    # the blob touches the far corner: clipping must keep it inside the patch
    assert set(out["index"].tolist()) == {0, 1}


def test_pos_fraction_zero_is_uniform_over_positions():
    s = _sampler(0.0, n=1)
    n = 4000
    out = s.sample(n)
    assert not bool(out["positive"].any())
    starts = out["start"].numpy()
    for axis, size in enumerate((12, 10, 8)):
        counts = np.bincount(starts[:, axis], minlength=size - 4 + 1)
        assert len(counts) == size - 4 + 1  # never beyond the last valid start
        assert stats.chisquare(counts).pvalue > 1e-3
    # the blob (x>=9, y>=7, z>=5) is hit only by starts x>=6, y>=4, z>=2: 3*3*3 of 9*7*5
    hit = float((out["mask"][:, 0].flatten(1).amax(1) == 1).float().mean())
    assert hit == pytest.approx(27 / 315, abs=0.03)


def test_intermediate_pos_fraction():
    s = _sampler(0.5, seed=3)
    pos = s.sample(2000)["positive"].float().mean().item()
    assert pos == pytest.approx(0.5, abs=0.05)


def test_small_volumes_are_padded():
    img = torch.zeros(1, 2, 6, 3)
    mask = torch.ones(1, 2, 6, 3)
    s = PatchSampler([img], [mask], PATCH, 0.0, np.random.default_rng(0))
    out = s.sample(3)
    assert out["image"].shape == (3, 1, *PATCH)
    # padding: image -1 (air), mask 0; the original voxels (value 0 / 1) are all there
    padded_img, padded_mask = s.images[0], s.masks[0]
    assert padded_img.shape == (1, 4, 6, 4)
    assert float(padded_img.min()) == -1.0 and int((padded_img == 0).sum()) == 2 * 6 * 3
    assert int(padded_mask.sum()) == 2 * 6 * 3
    torch.testing.assert_close(padded_img[:, 1:3, :, 0:3], img)


def test_exact_resume():
    a = _sampler(0.6, seed=11)
    a.sample(3)
    state = a.state_dict()
    expected = [a.sample(4) for _ in range(2)]

    b = _sampler(0.6, seed=999)  # a different stream, overwritten by the state
    b.load_state_dict(state)
    got = [b.sample(4) for _ in range(2)]
    for e, g in zip(expected, got, strict=True):
        for k in e:
            torch.testing.assert_close(g[k], e[k])
    # and without restoring, the other seed really does draw something else
    c = _sampler(0.6, seed=999)
    c.sample(3)
    assert not torch.equal(c.sample(4)["start"], expected[0]["start"])


def test_bad_arguments():
    img, mask = _subject()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="masks"):
        PatchSampler([img], [], PATCH, 0.5, rng)
    with pytest.raises(ValueError, match="mask 0"):
        PatchSampler([img], [mask[:, :5]], PATCH, 0.5, rng)
    with pytest.raises(ValueError, match="fg_channels"):
        PatchSampler([img], [mask], PATCH, 0.5, rng, fg_channels=[2])
