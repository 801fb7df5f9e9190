"""Decisions against known-good parts: conformal p-values, the alpha threshold, Benjamini-Hochberg,
partial_fit, the drift alarm (README "Decisions you can trust")."""

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.base import clone
from sklearn.pipeline import Pipeline

import _reference as ref
from _helpers import make_tokens
from sklearn_musc import (DriftMonitor, LNAMDTransformer, MutualScoringDetector, RsCINRescorer,
                          benjamini_hochberg, conformal_pvalues, conformal_threshold)
from sklearn_musc.conformal import SimpleJumper, fdr_decision, min_calibration_size


def slow_pvalues(calibration, scores):
    return np.array([(1 + sum(c >= s for c in calibration)) / (len(calibration) + 1) for s in scores])


def binomial_bound(a, n):
    return a + 2 * math.sqrt(a * (1 - a) / n)


# ------------------------------------------------------------------ the kernel


def test_pvalues_equal_the_definition_with_ties(rng):
    for n in (1, 2, 5, 19, 40):
        cal = rng.integers(0, 6, size=n).astype(float)  # many ties
        s = rng.integers(-1, 8, size=30).astype(float)
        np.testing.assert_array_equal(conformal_pvalues(cal, s), slow_pvalues(cal, s))


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.99])
def test_the_threshold_flags_exactly_the_pvalues_at_most_alpha(rng, alpha):
    for n in range(min_calibration_size(alpha), 120, 7):
        cal = np.round(rng.normal(size=n), 1)  # ties included
        s = np.r_[np.round(rng.normal(size=200), 1), cal]
        t = conformal_threshold(cal, alpha)
        np.testing.assert_array_equal(s > t, conformal_pvalues(cal, s) <= alpha)


def test_min_calibration_size_is_the_smallest_that_reaches_alpha():
    for alpha in (0.01, 0.05, 0.1, 1 / 3, 0.25, 0.5, 0.07):
        n = min_calibration_size(alpha)
        assert 1 / (n + 1) <= alpha
        assert n == 0 or 1 / n > alpha
        conformal_threshold(np.arange(max(n, 1.0)), alpha)  # enough
        if n > 1:
            with pytest.raises(ValueError, match=f"alpha={alpha:g} needs at least {n} calibration images"):
                conformal_threshold(np.arange(n - 1.0), alpha)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), True, "0.1"])
def test_levels_outside_zero_one_are_refused(bad):
    with pytest.raises(ValueError, match="alpha must be a number in"):
        conformal_threshold([1.0, 2.0], bad)
    with pytest.raises(ValueError, match="fdr must be a number in"):
        benjamini_hochberg([0.1, 0.2], bad)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="calibration scores contain NaN"):
        conformal_pvalues([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="scores to test contain NaN"):
        conformal_pvalues([1.0, 2.0], [np.nan])


def test_benjamini_hochberg_matches_scipy(rng):
    for m in (1, 2, 10, 100):
        for _ in range(20):
            p = np.r_[rng.uniform(size=m // 2) * 0.02, rng.uniform(size=m - m // 2)]
            p = np.round(p, 3)  # ties
            for q in (0.05, 0.1, 0.3):
                rejected, adjusted = benjamini_hochberg(p, q)
                expected = scipy.stats.false_discovery_control(p, method="bh")
                np.testing.assert_allclose(adjusted, expected, rtol=1e-12)
                np.testing.assert_array_equal(rejected, expected <= q)


def test_fdr_decision_flags_what_bh_rejects_and_its_threshold_separates_them(rng):
    for trial in range(200):
        refs = rng.normal(size=int(rng.integers(10, 60)))
        batch = np.r_[rng.normal(size=int(rng.integers(1, 30))), rng.normal(4, 1, size=int(rng.integers(0, 10)))]
        if trial % 7 == 0:
            batch = np.round(batch, 1)  # ties
        p = conformal_pvalues(refs, batch)
        q = (0.05, 0.1, 0.3)[trial % 3]
        threshold, labels = fdr_decision(batch, p, refs, q)
        rejected, _ = benjamini_hochberg(p, q)
        np.testing.assert_array_equal(labels, np.where(rejected, -1, 1))
        np.testing.assert_array_equal(batch > threshold, rejected)  # one score separates the flagged parts


def test_pvalues_are_valid_and_an_off_by_one_quantile_is_caught():
    """Exchangeable scores, many seeded splits: P(p <= alpha) within its binomial bound; one rank lower is not."""
    rng = np.random.default_rng(7)
    n_splits, n_cal = 4000, 19
    for alpha in (0.05, 0.1, 0.2):
        hits = wrong = 0
        for _ in range(n_splits):
            cal, s = rng.gamma(2.0, size=n_cal), rng.gamma(2.0)
            t = conformal_threshold(cal, alpha)
            hits += s > t
            g = int(math.floor(alpha * (n_cal + 1))) - 1
            wrong += s > np.sort(cal)[::-1][g + 1]  # the next order statistic down
        assert hits / n_splits <= binomial_bound(alpha, n_splits)
        assert hits / n_splits >= alpha - 3 * math.sqrt(alpha * (1 - alpha) / n_splits)  # not vacuous
        assert wrong / n_splits > binomial_bound(alpha, n_splits)


# ------------------------------------------------------------------ the detector


def features_of(tokens):
    return LNAMDTransformer(r_list=(1, 3), device="cpu").fit_transform(tokens)


def slow_calibration(feats, topmin_min=0.0, topmin_max=0.2):
    """Each pool image scored by the other pool images and one infinitely distant scorer (float64 loops)."""
    f = np.asarray(feats, dtype=np.float64)
    n, n_sets, h, w, C = f.shape
    f = f.reshape(n, n_sets, h * w, C)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    out = np.zeros(n)
    for i in range(n):
        patch = np.zeros(h * w)
        for s in range(n_sets):
            d = [ref.nearest_distances(f[i, s], f[j, s]) for j in range(n) if j != i]
            d = np.sort(np.array(d + [np.full(h * w, np.inf)]), axis=0)
            k_max = max(1, math.floor(n * topmin_max))
            k_min = min(math.floor(n * topmin_min), k_max - 1)
            patch += d[k_min:k_max].mean(axis=0)
        out[i] = (patch / n_sets).max()
    return out


@pytest.mark.parametrize("n_pool", [2, 5, 11])
@pytest.mark.parametrize("topmin", [(0.0, 0.2), (0.1, 0.6)])
def test_calibration_scores_against_the_float64_reference(rng, n_pool, topmin):
    feats = features_of(make_tokens(rng, n=n_pool, h=4, w=5, dim=16))
    det = MutualScoringDetector(novelty=True, topmin_min=topmin[0], topmin_max=topmin[1], device="cpu").fit(feats)
    expected = slow_calibration(feats.features, *topmin)
    np.testing.assert_allclose(det.calibration_scores_, expected, atol=1e-5)


@pytest.mark.parametrize("n_pool", [3, 8])
def test_pvalues_bound_the_full_conformal_pvalue(rng, n_pool):
    """Refit on pool + {x}: x's batch score is its novelty score, each pool image's batch score is at most
    its calibration score, so the p-value is at least the full-conformal one (x ranked among the N + 1)."""
    tokens = make_tokens(rng, n=n_pool + 4, h=4, w=4, dim=12)
    feats = features_of(tokens)
    pool = feats.take(range(n_pool))
    det = MutualScoringDetector(novelty=True, topmin_max=0.5, device="cpu").fit(pool)
    out = det.transform(feats.take(range(n_pool, n_pool + 4)))
    for k in range(4):
        batch = MutualScoringDetector(topmin_max=0.5, device="cpu").fit(feats.take(list(range(n_pool)) + [n_pool + k]))
        s = batch.anomaly_scores_
        assert abs(s[-1] - out.scores[k]) < 1e-5
        assert (s[:-1] <= det.calibration_scores_ + 1e-6).all()
        full = (s >= s[-1] - 1e-7).sum() / (n_pool + 1)
        assert out.pvalues[k] >= full - 1e-12
    np.testing.assert_array_equal(det.pvalues(feats.take(range(n_pool, n_pool + 4))), out.pvalues)


def test_alpha_labels_new_images_by_their_pvalues(rng):
    tokens = make_tokens(rng, n=40, h=4, w=4, dim=12)
    tokens[35:, :, 1:3, 1] += 3.0  # defects in the last five
    feats = features_of(tokens)
    det = MutualScoringDetector(novelty=True, alpha=0.1, device="cpu").fit(feats.take(range(25)))
    new = feats.take(range(25, 40))
    p = det.pvalues(new)
    np.testing.assert_array_equal(det.predict(new), np.where(p <= 0.1, -1, 1))
    assert det.offset_ == -det.threshold_
    assert det.threshold_ == conformal_threshold(det.calibration_scores_, 0.1)
    assert (det.predict(new)[10:] == -1).all()  # the defects
    np.testing.assert_array_equal(det.labels_, np.where(det.anomaly_scores_ > det.threshold_, -1, 1))
    # a Pipeline's transform gives the p-values
    pipe = Pipeline([("lnamd", LNAMDTransformer(r_list=(1, 3), device="cpu")),
                     ("msm", MutualScoringDetector(novelty=True, alpha=0.1, device="cpu"))]).fit(tokens[:25])
    np.testing.assert_array_equal(pipe.transform(tokens[25:]).pvalues, p)


def test_the_estimator_is_valid_on_exchangeable_parts_and_catches_a_wrong_quantile():
    """Many seeded pools of exchangeable good parts: false alarms within the binomial bound at alpha;
    the next order statistic down (an off-by-one quantile) goes over it."""
    rng = np.random.default_rng(3)
    alpha, n_pool, n_splits = 0.2, 9, 400
    base = rng.normal(size=(1, 1, 3, 3, 8)) * 2.0
    hits = wrong = 0
    for seed in range(n_splits):
        r = np.random.default_rng(seed)
        parts = base + r.normal(size=(n_pool + 1, 1, 3, 3, 8)) * r.gamma(2.0, size=(n_pool + 1, 1, 1, 1, 1))
        det = MutualScoringDetector(novelty=True, alpha=alpha, topmin_max=0.5, device="cpu").fit(parts[:n_pool])
        score = -det.score_samples(parts[n_pool:])[0]
        hits += det.predict(parts[n_pool:])[0] == -1
        g = int(math.floor(alpha * (n_pool + 1))) - 1
        wrong += score > np.sort(det.calibration_scores_)[::-1][g + 1]
    assert hits / n_splits <= binomial_bound(alpha, n_splits)
    assert wrong / n_splits > binomial_bound(alpha, n_splits)


def test_bad_calibration_settings_get_clear_errors(rng):
    feats = features_of(make_tokens(rng, n=6, h=3, w=3, dim=8))
    with pytest.raises(ValueError, match=r"alpha=0.05 needs at least 19 calibration images .* has 6"):
        MutualScoringDetector(novelty=True, alpha=0.05, device="cpu").fit(feats)
    with pytest.raises(ValueError, match="alpha must be"):
        MutualScoringDetector(novelty=True, alpha=1.0, device="cpu").fit(feats)
    with pytest.raises(ValueError, match="needs novelty=True"):
        MutualScoringDetector(alpha=0.2, device="cpu").fit(feats)
    with pytest.raises(ValueError, match="not both"):
        MutualScoringDetector(novelty=True, alpha=0.2, threshold=1.0, device="cpu").fit(feats)
    with pytest.raises(ValueError, match="pool of one image has no other image"):
        MutualScoringDetector(novelty=True, alpha=0.5, device="cpu").fit(feats.take([0]))
    one = MutualScoringDetector(novelty=True, device="cpu").fit(feats.take([0]))
    with pytest.raises(ValueError, match="pool of one image has no other image"):
        one.pvalues(feats.take([1]))
    with pytest.raises(ValueError, match="give references"):
        MutualScoringDetector(fdr=0.1, device="cpu").fit(feats)
    with pytest.raises(ValueError, match="n_subsets=1"):
        MutualScoringDetector(fdr=0.1, n_subsets=2, device="cpu").fit(feats, references=feats.take([0, 1]))
    with pytest.raises(ValueError, match="topmin_max < 1"):
        MutualScoringDetector(novelty=True, topmin_max=1.0, device="cpu").fit(feats).pvalues(feats)


def test_partial_fit_equals_refitting_on_the_larger_pool(rng):
    tokens = make_tokens(rng, n=30, h=4, w=4, dim=12)
    feats = features_of(tokens)
    new = feats.take(range(24, 30))
    for max_pool in (40, None, 20):  # incremental; growing past the kept lists; dropping the oldest
        kw = dict(novelty=True, alpha=0.2, max_pool_size=max_pool, device="cpu")
        grown = MutualScoringDetector(**kw).fit(feats.take(range(10)))
        grown.partial_fit(feats.take(range(10, 17))).partial_fit(feats.take(range(17, 24)))
        kept = range(24 - min(max_pool or 24, 24), 24)
        refit = MutualScoringDetector(**kw).fit(feats.take(kept))
        np.testing.assert_allclose(grown.pool_.features, refit.pool_.features, atol=1e-6)
        np.testing.assert_allclose(grown.calibration_scores_, refit.calibration_scores_, atol=1e-6)
        assert abs(grown.threshold_ - refit.threshold_) < 1e-6
        np.testing.assert_array_equal(grown.pvalues(new), refit.pvalues(new))
        assert grown.pool_.sources == refit.pool_.sources
    # unfitted: partial_fit fits
    first = MutualScoringDetector(novelty=True, device="cpu").partial_fit(feats.take(range(5)))
    assert first.pool_.n_images == 5
    with pytest.raises(AttributeError, match="partial_fit"):
        MutualScoringDetector().partial_fit(feats)


def test_references_calibrate_the_batch_and_bh_labels_it(rng):
    tokens = make_tokens(rng, n=55, h=4, w=4, dim=12)
    tokens[:8, :, 1:3, 2] += 3.0 * rng.normal(size=(8, 1, 2, 12))  # eight defective images in the batch
    feats = features_of(tokens)
    batch, refs = feats.take(range(25)), feats.take(range(25, 55))
    det = MutualScoringDetector(fdr=0.2, device="cpu").fit(batch, references=refs)
    # each reference scored by the batch and the other references (float64 loops)
    f = np.asarray(feats.features, dtype=np.float64)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    n, S, h, w, C = f.shape
    f = f.reshape(n, S, h * w, C)
    expected = []
    for r in range(25, 55):
        patch = sum(ref.scored_by(f[r, s], [f[j, s] for j in range(55) if j != r]) for s in range(S)) / S
        expected.append(patch.max())
    np.testing.assert_allclose(det.reference_scores_, expected, atol=1e-5)
    np.testing.assert_array_equal(det.pvalues_, conformal_pvalues(det.reference_scores_, det.anomaly_scores_))
    rejected, _ = benjamini_hochberg(det.pvalues_, 0.2)
    np.testing.assert_array_equal(det.labels_, np.where(rejected, -1, 1))
    np.testing.assert_array_equal(det.labels_, np.where(det.anomaly_scores_ > det.threshold_, -1, 1))
    assert (det.labels_[:8] == -1).all()
    out = det.fit_transform(batch, references=refs)
    np.testing.assert_array_equal(out.pvalues, det.pvalues_)
    # RsCIN passes the detector's p-values on, unchanged
    rs = RsCINRescorer().fit(out)
    np.testing.assert_array_equal(rs.pvalues_, det.pvalues_)


def test_rscin_hands_on_the_detectors_pvalues_of_new_images(rng):
    tokens = make_tokens(rng, n=30, h=4, w=4, dim=12)
    feats = features_of(tokens)
    det = MutualScoringDetector(novelty=True, alpha=0.2, device="cpu")
    pool_out = det.fit_transform(feats.take(range(20)))
    rs = RsCINRescorer(novelty=True).fit(pool_out)
    new = det.transform(feats.take(range(20, 30)))
    np.testing.assert_array_equal(rs.pvalues(new), det.pvalues(feats.take(range(20, 30))))
    with pytest.raises(ValueError, match="p-values"):
        rs.pvalues(new.scores[:, None])


def test_new_parameters_clone_and_survive_pickling(rng):
    import pickle

    det = MutualScoringDetector(novelty=True, alpha=0.2, max_pool_size=30, device="cpu")
    assert clone(det).get_params()["alpha"] == 0.2
    feats = features_of(make_tokens(rng, n=12, h=3, w=3, dim=8))
    det.fit(feats.take(range(9)))
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.pvalues(feats.take(range(9, 12))), det.pvalues(feats.take(range(9, 12))))


# ------------------------------------------------------------------ the drift alarm


def test_drift_alarm_false_alarms_within_the_level_and_a_wrong_pvalue_caught():
    """Unchanged streams: alarms at most `level` (binomial bound). The common mistake, p-values against a
    fixed calibration set of 20 parts (dependent through it, not uniform given it), is caught."""
    level, n_streams, length = 0.1, 300, 300
    rng = np.random.default_rng(11)
    alarms = wrong = 0
    for i in range(n_streams):
        stream, calibration = rng.normal(size=length), rng.normal(size=20)
        alarms += DriftMonitor(level=level, random_state=i).fit(stream).alarm_
        capital = SimpleJumper(0.01)
        wrong += any(capital.update(p) >= 1 / level for p in conformal_pvalues(calibration, stream))
    assert alarms / n_streams <= binomial_bound(level, n_streams)
    assert wrong / n_streams > binomial_bound(level, n_streams)


def test_drift_alarm_rings_after_a_change_and_reports(rng):
    before, after = rng.normal(size=400), rng.normal(loc=1.5, size=200)
    monitor = DriftMonitor(random_state=0).fit(before)
    assert not monitor.alarm_
    monitor.partial_fit(after)
    assert monitor.alarm_ and 400 <= monitor.alarm_index_ < 460
    summary = monitor.summary()
    assert summary["alarm"] and summary["parts_seen"] == 600 and summary["martingale_max"] >= 100
    assert len(monitor.pvalues_) == len(monitor.martingale_) == 600
    assert (monitor.pvalues_ > 0).all() and (monitor.pvalues_ <= 1).all()
    with pytest.raises(ValueError, match="NaN"):
        DriftMonitor().fit([0.1, np.nan])
    with pytest.raises(ValueError, match="level must be"):
        DriftMonitor(level=1.5).fit([0.1])
    assert clone(DriftMonitor(level=0.05)).level == 0.05
