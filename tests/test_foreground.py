"""MutualScoringDetector(foreground=...): masks from the batch's first principal component."""

import numpy as np
import pytest

import _reference as ref
from sklearn_musc import MutualScoringDetector


def object_batch(rng, n=10, h=8, w=8, dim=16, n_sets=2):
    """Parts (a per-position pattern in rows/columns 2-5) on a plain background, (n, n_sets, h, w, dim)."""
    bg = 2.0 * rng.normal(size=(n_sets, 1, 1, dim))
    part = 2.0 * rng.normal(size=(n_sets, 1, 1, dim)) + rng.normal(size=(n_sets, 4, 4, dim))
    X = np.broadcast_to(bg, (n, n_sets, h, w, dim)).copy()
    X[:, :, 2:6, 2:6] = part
    X += 0.3 * rng.normal(size=X.shape)
    return X.astype(np.float32), bg, part


def unit(X):
    return X / np.linalg.norm(X, axis=-1, keepdims=True)


def test_masks_and_scores_match_float64_reference(rng):
    X, bg, _ = object_batch(rng)
    X[3, :, 1, 3] += 1.5 * rng.normal(size=(2, 16))  # a defect next to the part
    X[2, :, 2:5, 2:5] = bg + 0.3 * rng.normal(size=(2, 3, 3, 16))  # a piece of image 2's part missing
    det = MutualScoringDetector(foreground="always", device="cpu", progress=False).fit(X)
    Z = unit(X).astype(np.float64)  # the detector normalises in float32
    masks, within, border = ref.foreground_masks(Z[:, -1])
    np.testing.assert_array_equal(det.foreground_masks_, masks)
    assert det.foreground_stats_["within_share"] == pytest.approx(within, abs=1e-5)
    assert det.foreground_stats_["border_foreground"] == pytest.approx(border, abs=1e-12)
    assert 0 < masks.mean() < 1 and masks[3, 1, 3]
    assert masks[2, 3, 3]  # the missing piece stays scored: foreground in most of the batch
    n, n_sets, h, w, dim = X.shape
    expected = np.stack([ref.msm_foreground(Z[:, s].reshape(n, h * w, dim), masks.reshape(n, -1)).reshape(n, h, w)
                         for s in range(n_sets)], axis=1)
    assert np.abs(det.set_patch_scores_ - expected).max() < 1e-5
    assert np.isfinite(det.anomaly_scores_).all()


def test_background_outlier_no_longer_ranks_first(rng):
    X, bg, part = object_batch(rng, n=12)
    # image 0: something odd lying on the background, away from the part's direction
    odd = rng.normal(size=(2, 16))
    axis = (part.mean(axis=(1, 2)) - bg[:, 0, 0])
    odd -= (odd * axis).sum(-1, keepdims=True) / (axis**2).sum(-1, keepdims=True) * axis
    scale = np.linalg.norm(bg[:, 0, 0], axis=-1, keepdims=True)
    X[0, :, 0, 0] += scale * odd / np.linalg.norm(odd, axis=-1, keepdims=True)
    X[5, :, 3, 4] += 1.2 * rng.normal(size=(2, 16))  # a defect on image 5's part
    plain = MutualScoringDetector(device="cpu", progress=False).fit(X)
    masked = MutualScoringDetector(foreground="auto", device="cpu", progress=False).fit(X)
    assert plain.anomaly_scores_.argmax() == 0
    assert masked.foreground_applied_ and not masked.foreground_masks_[0, 0, 0]
    assert masked.anomaly_scores_.argmax() == 5


def test_auto_leaves_textures_unmasked(rng):
    # every image a uniform texture of one of two kinds: the first component splits images, not regions
    kinds = 3.0 * rng.normal(size=(2, 1, 1, 1, 16))
    X = kinds[np.arange(10) % 2] + 0.5 * rng.normal(size=(10, 2, 6, 6, 16))
    X = X.astype(np.float32)
    auto = MutualScoringDetector(foreground="auto", device="cpu", progress=False).fit(X)
    plain = MutualScoringDetector(device="cpu", progress=False).fit(X)
    assert not auto.foreground_applied_
    assert auto.foreground_stats_["within_share"] < 0.5
    np.testing.assert_array_equal(auto.anomaly_scores_, plain.anomaly_scores_)
    assert plain.foreground_masks_ is None and plain.foreground_stats_ is None


def test_foreground_is_refused_where_it_has_no_meaning(rng):
    X, _, _ = object_batch(rng, n=6)
    with pytest.raises(ValueError, match="not available with novelty=True"):
        MutualScoringDetector(foreground="auto", novelty=True, device="cpu").fit(X)
    with pytest.raises(ValueError, match="cannot be combined with references"):
        MutualScoringDetector(foreground="auto", device="cpu").fit(X[:4], references=X[4:])
    with pytest.raises(ValueError, match="foreground"):
        MutualScoringDetector(foreground="yes", device="cpu").fit(X)
