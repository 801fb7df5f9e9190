"""Tests of sklearn_musc.metrics against slow, obviously correct references."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    make_scorer,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_musc.metrics import (
    anomaly_scorer,
    evaluate,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pro_score,
)

# ---------------------------------------------------------------------------
# references: float64, one threshold at a time
# ---------------------------------------------------------------------------


def ref_f1_max(y, s):
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return f1.max()


def ref_pro(masks, maps, max_fpr=0.3):
    """PRO by its definition: a loop over the distinct thresholds and over the regions."""
    masks = np.asarray(masks) > 0
    maps = np.asarray(maps, dtype=np.float64)
    regions = []  # boolean masks over the whole stack, one per region
    for i in range(len(masks)):
        labels, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for r in range(1, k + 1):
            region = np.zeros(masks.shape, bool)
            region[i] = labels == r
            regions.append(region)
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([(above & region).sum() / region.sum() for region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs[:-1], pros[:-1]), zip(fprs[1:], pros[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # cut the segment at max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_masks(rng, n=6, h=14, w=13, n_clean=2):
    """Blobby masks with several regions per image; the first n_clean images are defect-free."""
    masks = ndimage.binary_dilation(rng.random((n, h, w)) < 0.04, structure=np.ones((1, 2, 2)))
    masks[:n_clean] = False
    assert masks.any()
    return masks


def random_maps(rng, masks, decimals=None):
    maps = rng.normal(size=masks.shape) + 1.2 * masks
    return maps if decimals is None else maps.round(decimals)


# ---------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_image_metrics_match_sklearn(rng, decimals):
    for n in (2, 7, 50, 300):
        y = rng.random(n) < 0.4
        y[:2] = [True, False]
        s = rng.normal(size=n) + y
        if decimals is not None:
            s = s.round(decimals)  # ties, also across the classes
        assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
        assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-9)
        assert image_f1_max(y, s) == pytest.approx(ref_f1_max(y, s), abs=1e-9)


def test_image_metrics_dtypes(rng):
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    s = rng.integers(0, 4, size=8)  # integer scores with ties
    expected = roc_auc_score(y, s)
    for yy in (y, y.astype(bool), y.astype(float), list(y)):
        for ss in (s, s.astype(np.float32), s.astype(np.float16), list(s), torch.tensor(s)):
            assert image_auroc(yy, ss) == pytest.approx(expected, abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_f1_max(y, s) == pytest.approx(ref_f1_max(y, s), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_metrics_match_sklearn(rng, decimals):
    masks = random_masks(rng)
    maps = random_maps(rng, masks, decimals)
    y, s = masks.ravel(), maps.ravel()
    for m in (maps, maps.astype(np.float32)):
        ss = m.ravel().astype(np.float64)
        assert pixel_auroc(masks, m) == pytest.approx(roc_auc_score(y, ss), abs=1e-9)
        assert pixel_ap(masks, m) == pytest.approx(average_precision_score(y, ss), abs=1e-9)
        assert pixel_f1_max(masks, m) == pytest.approx(ref_f1_max(y, ss), abs=1e-9)
    res = evaluate(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps)
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert res["pixel_f1max"] == pytest.approx(ref_f1_max(y, s), abs=1e-9)


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_pro_matches_reference(rng, decimals, max_fpr):
    masks = random_masks(rng)
    maps = random_maps(rng, masks, decimals)
    expected = ref_pro(masks, maps, max_fpr)
    assert pro_score(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-6)
    assert pro_score(masks, maps.astype(np.float32), max_fpr=max_fpr) == pytest.approx(
        ref_pro(masks, maps.astype(np.float32), max_fpr), abs=1e-6)
    res = evaluate(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps, max_fpr=max_fpr)
    assert res["pro"] == pytest.approx(expected, abs=1e-6)


def test_pro_ties_straddling_classes(rng):
    # few distinct values shared by normal and anomalous pixels: diagonal steps
    masks = random_masks(rng, n=4, h=10, w=10, n_clean=1)
    for _ in range(5):
        maps = rng.integers(0, 4, size=masks.shape) + masks * rng.integers(0, 2, size=masks.shape)
        assert pro_score(masks, maps) == pytest.approx(ref_pro(masks, maps), abs=1e-6)


def test_pro_uses_8_connectivity():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 5, 5:7] = True
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = maps[0, 5, 5:7] = 1.0
    # at threshold 1: FPR 0, overlaps 1/2 and 1 -> PRO 0.75; then straight to (1, 1)
    assert pro_score(masks, maps) == pytest.approx(0.75 + 0.15 * 0.25, abs=1e-12)
    assert ref_pro(masks, maps) == pytest.approx(0.7875, abs=1e-12)


def test_pro_regions_weigh_equally():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :6, :6] = True  # big region, found
    masks[1, 0, 0] = True  # one-pixel region, missed (lowest score)
    maps = masks.astype(float)
    maps[1, 0, 0] = -1.0
    # PRO is 1/2 from FPR 0 until every normal pixel is positive
    assert pro_score(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert pixel_auroc(masks, maps) == pytest.approx(36 / 37, abs=1e-12)


# ---------------------------------------------------------------------------
# known values
# ---------------------------------------------------------------------------


def test_perfect_and_inverted(rng):
    masks = random_masks(rng)
    y = masks.any(axis=(1, 2))
    perfect = masks + rng.uniform(0, 0.9, masks.shape)
    res = evaluate(y, perfect.max(axis=(1, 2)), masks, perfect)
    assert res == {k: 1.0 for k in res}
    assert list(res) == ["image_auroc", "image_f1max", "image_ap",
                         "pixel_auroc", "pixel_f1max", "pixel_ap", "pro"]
    inverted = -perfect
    res = evaluate(y, -perfect.max(axis=(1, 2)), masks, inverted)
    assert res["image_auroc"] == 0.0
    assert res["pixel_auroc"] == 0.0
    assert res["pro"] == 0.0


def test_constant_scores():
    masks = np.zeros((2, 5, 5), bool)
    masks[1, 1:3, 1:3] = True
    maps = np.full(masks.shape, 0.5, np.float32)
    assert pixel_auroc(masks, maps) == 0.5
    assert pixel_ap(masks, maps) == pytest.approx(4 / 50)
    # one threshold: the PRO curve is the diagonal, area 0.3^2 / 2 over 0.3
    assert pro_score(masks, maps) == pytest.approx(0.15)
    assert pro_score(masks, maps, max_fpr=1.0) == pytest.approx(0.5)


def test_evaluate_image_only_and_without_pro(rng):
    y = np.array([0, 1, 0, 1, 1])
    s = np.array([0.1, 0.9, 0.3, 0.2, 0.8])
    res = evaluate(y, s)
    assert sorted(res) == ["image_ap", "image_auroc", "image_f1max"]
    assert res["image_auroc"] == pytest.approx(roc_auc_score(y, s))
    masks = random_masks(rng)
    maps = random_maps(rng, masks)
    res = evaluate(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)), masks, maps, pro=False)
    assert "pro" not in res and "pixel_ap" in res


def test_pixel_inputs_accepted(rng):
    masks = random_masks(rng)
    maps = random_maps(rng, masks)
    expected = pixel_auroc(masks, maps)
    assert pixel_auroc(masks.astype(np.uint8) * 255, maps) == expected  # 0/255 masks
    assert pixel_auroc(masks * 0.7, maps) == expected  # float masks, > 0 is anomalous
    assert pixel_auroc(list(masks), list(maps)) == expected
    assert pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == expected
    assert pro_score(masks[-1], maps[-1]) == pro_score(masks[-1:], maps[-1:])  # one 2-D image


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_image_errors():
    with pytest.raises(ValueError, match="3 labels but scores has 2"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_ap([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="infinite"):
        image_f1_max([0, 1, 1], [0.1, np.inf, 0.3])
    with pytest.raises(ValueError, match="single class"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only normal images"):
        image_ap([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="not binary"):
        image_auroc([-1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not binary"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc([0, 1], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="numeric"):
        image_auroc([0, 1], ["a", "b"])


def test_pixel_errors():
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 1, 1] = True
    maps = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="resize"):
        pixel_auroc(masks, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="resize"):
        evaluate([0, 1], [0.0, 1.0], masks, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        pixel_ap(masks, [np.zeros((4, 4)), np.zeros((5, 5))])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pro_score(masks, bad)
    with pytest.raises(ValueError, match="only normal pixels"):
        pro_score(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="only anomalous pixels"):
        pixel_f1_max(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="negative"):
        pixel_auroc(masks - 0.5, maps)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(masks.ravel(), maps.ravel())
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(masks, maps, max_fpr=0.0)
    with pytest.raises(ValueError, match="maps is None"):
        evaluate([0, 1], [0.0, 1.0], masks=masks)


# ---------------------------------------------------------------------------
# scikit-learn scorers
# ---------------------------------------------------------------------------


class ColumnDetector(BaseEstimator):
    """A toy transductive detector: the anomaly score of a row is one of its columns."""

    def __init__(self, column=0, sign=1.0):
        self.column = column
        self.sign = sign

    def fit(self, X, y=None):
        self.anomaly_scores_ = self.sign * np.asarray(X)[:, self.column]
        return self


@pytest.fixture
def toy_batch(rng):
    X = rng.normal(size=(40, 4))
    y = (X[:, 2] + 0.3 * rng.normal(size=40) > 0.5).astype(int)
    return X, y


@pytest.mark.parametrize("metric", [image_auroc, image_ap, image_f1_max, "image_ap"])
def test_anomaly_scorer_grid_search(toy_batch, metric):
    X, y = toy_batch
    idx = np.arange(len(X))
    grid = {"column": [0, 1, 2, 3], "sign": [-1.0, 1.0]}
    search = GridSearchCV(ColumnDetector(), grid, scoring=anomaly_scorer(metric), cv=[(idx, idx)])
    search.fit(X, y)
    assert search.best_params_ == {"column": 2, "sign": 1.0}
    fn = metric if callable(metric) else image_ap
    assert search.best_score_ == pytest.approx(fn(y, X[:, 2]))


def test_anomaly_scorer_pipeline_and_errors(toy_batch):
    X, y = toy_batch
    idx = np.arange(len(X))
    pipe = make_pipeline(FunctionTransformer(), ColumnDetector())
    search = GridSearchCV(pipe, {"columndetector__column": [0, 1, 2, 3]},
                          scoring=anomaly_scorer(), cv=[(idx, idx)]).fit(X, y)
    assert search.best_params_ == {"columndetector__column": 2}
    scorer = anomaly_scorer(image_auroc)
    with pytest.raises(ValueError, match="transductive"):
        cross_val_score(ColumnDetector(), X, y, scoring=scorer, cv=KFold(4), error_score="raise")
    with pytest.raises(AttributeError, match="anomaly_scores_"):
        scorer(FunctionTransformer().fit(X), X, y)
    with pytest.raises(ValueError, match="labels y"):
        scorer(ColumnDetector().fit(X), X, None)
    with pytest.raises(ValueError, match="unknown metric"):
        anomaly_scorer("pixel_auroc")


def test_make_scorer_signature(toy_batch):
    X, y = toy_batch
    scorer = make_scorer(image_auroc, response_method="decision_function")
    ours = cross_val_score(LogisticRegression(), X, y, scoring=scorer, cv=3)
    theirs = cross_val_score(LogisticRegression(), X, y, scoring="roc_auc", cv=3)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
