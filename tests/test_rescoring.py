import dataclasses

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

import _reference as ref
from _helpers import make_tokens
from sklearn_musc import ImageScores, LNAMDTransformer, MutualScoringDetector, RsCINRescorer
from sklearn_musc.thresholds import auto_threshold


@pytest.mark.parametrize("k_list", [(1, 2, 3), (1, 8, 9), (1, 7), (4,)])
def test_rscin_matches_float64_reference(rng, k_list):
    emb = rng.normal(size=(12, 10)) + 0.8  # mostly positive cosines, some negative
    scores = rng.normal(size=12)
    out = RsCINRescorer(k_list=k_list).fit(emb, scores=scores)
    # the reference code min-max scales first; the rows of weights sum to 1,
    # so on the input scale the output is min + (max - min) * the reference's
    expected = scores.min() + np.ptp(scores) * ref.rscin(scores, emb, k_list)
    assert np.abs(out.anomaly_scores_ - expected).max() < 1e-12


def test_output_on_the_scale_of_the_input_ranking_unchanged(rng):
    emb = rng.normal(size=(15, 6)) + 1.0
    scores = rng.uniform(0.2, 0.6, size=15)
    out = RsCINRescorer().fit(emb, scores=scores).anomaly_scores_
    scaled = RsCINRescorer().fit(emb, scores=(scores - scores.min()) / np.ptp(scores)).anomaly_scores_
    np.testing.assert_allclose(out, scores.min() + np.ptp(scores) * scaled, atol=1e-12)
    np.testing.assert_array_equal(np.argsort(out), np.argsort(scaled))
    assert scores.min() <= out.min() and out.max() <= scores.max()
    # an affine change of the scores changes the output the same way
    np.testing.assert_allclose(RsCINRescorer().fit(emb, scores=3 * scores + 1).anomaly_scores_, 3 * out + 1)


def test_k_one_returns_the_scores(rng):
    scores = rng.uniform(3, 7, size=9)
    out = RsCINRescorer(k_list=(1,)).fit(rng.normal(size=(9, 4)), scores=scores)
    np.testing.assert_allclose(out.anomaly_scores_, scores)


def test_k_larger_than_the_batch_is_clipped(rng):
    emb, scores = rng.normal(size=(4, 6)), rng.normal(size=4)
    out = RsCINRescorer(k_list=(2, 10)).fit(emb, scores=scores)
    assert out.k_list_ == (2, 4)
    expected = scores.min() + np.ptp(scores) * ref.rscin(scores, emb, (2, 4))  # on the input scale
    np.testing.assert_allclose(out.anomaly_scores_, expected, atol=1e-12)


@pytest.mark.parametrize("contamination", [0.2, "auto"])
def test_all_equal_scores_stay_equal_and_flag_nothing(rng, contamination):
    out = RsCINRescorer(contamination=contamination).fit(rng.normal(size=(5, 3)), scores=np.full(5, 0.7))
    np.testing.assert_allclose(out.anomaly_scores_, np.full(5, 0.7))
    assert (out.labels_ == 1).all() and np.isfinite(out.threshold_)


def test_duplicates_keep_the_image_itself(rng):
    emb = np.repeat(rng.normal(size=(1, 6)), 5, axis=0)  # five identical images
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    out = RsCINRescorer(k_list=(1,)).fit(emb, scores=scores)
    np.testing.assert_allclose(out.anomaly_scores_, scores)


def test_negative_similarities_get_no_weight():
    emb = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    scores = np.array([0.0, 1.0, 0.5])
    out = RsCINRescorer(k_list=(3,)).fit(emb, scores=scores)
    assert np.isfinite(out.anomaly_scores_).all()
    # image 0: itself (1), image 2 (cosine 0), image 1 (cosine -1 -> 0)
    assert out.anomaly_scores_[0] == pytest.approx(0.0)


def test_behind_isolation_forest(rng):
    X = rng.normal(size=(40, 5))
    X[7] += 6.0
    forest = IsolationForest(random_state=0).fit(X)
    out = RsCINRescorer(k_list=(1, 2), contamination=0.05).fit(X, scores=-forest.score_samples(X))
    assert out.anomaly_scores_.argmax() == 7 and out.labels_[7] == -1


def test_last_step_of_the_pipeline_uses_the_flowing_scores(rng):
    tokens = make_tokens(rng, n=8, h=6, w=6, dim=16)
    tokens[3, :, 1:3, 1:3] += 3.0
    pipe = Pipeline([
        ("lnamd", LNAMDTransformer(device="cpu")),
        ("msm", MutualScoringDetector(device="cpu")),
        ("rscin", RsCINRescorer()),
    ])
    labels = pipe.fit_predict(tokens)
    rs = pipe["rscin"]
    # "auto" picks the salient features (raw tokens carry no image embedding anyway), windows (1, 7)
    assert rs.embedding_ == "salient" and rs.k_list_ == (1, 7)
    salient = pipe["msm"].fit_transform(pipe["lnamd"].transform(tokens)).salient_features
    raw = pipe["msm"].anomaly_scores_
    expected = raw.min() + np.ptp(raw) * ref.rscin(raw, salient, (1, 7))
    assert np.abs(rs.anomaly_scores_ - expected).max() < 1e-6
    assert rs.anomaly_scores_.argmax() == 3 and labels[3] == -1


def test_embedding_choice(rng):
    batch = ImageScores(scores=rng.normal(size=5), embeddings=rng.normal(size=(5, 3)),
                        salient_features=rng.normal(size=(5, 4)))
    assert RsCINRescorer().fit(batch).embedding_ == "salient"  # "auto": the salient feature first
    assert RsCINRescorer().fit(dataclasses.replace(batch, salient_features=None)).embedding_ == "image"
    assert RsCINRescorer(embedding="image").fit(batch).embedding_ == "image"
    assert RsCINRescorer(embedding="salient").fit(batch).embedding_ == "salient"
    with pytest.raises(ValueError, match="no such embedding"):
        RsCINRescorer(embedding="image").fit(ImageScores(scores=batch.scores))
    with pytest.raises(ValueError, match="embedding must be"):
        RsCINRescorer(embedding="cls").fit(batch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"X": np.ones((3, 2))}, "scores are required"),
        ({"X": np.ones((3, 2)), "scores": np.ones(4)}, "disagree in length: 4 scores, 3 embeddings"),
        ({"X": np.ones((3, 2)), "scores": np.array([0.0, np.nan, 1.0])}, "NaN"),
        ({"X": ImageScores(scores=np.ones(3), embeddings=np.ones((3, 2))), "scores": np.ones(3)}, "do not pass"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RsCINRescorer().fit(**kwargs)


def test_sklearn_contract():
    est = RsCINRescorer(k_list=[1, 8, 9])
    assert clone(est).get_params() == {"k_list": [1, 8, 9], "embedding": "auto", "contamination": "auto",
                                       "threshold": None, "novelty": False}
    with pytest.raises(ValueError, match="k_list"):
        RsCINRescorer(k_list=(0,)).fit(np.ones((2, 2)), scores=np.ones(2))


def test_novelty_rescores_a_new_image_with_its_nearest_fitted_images(rng):
    E = rng.normal(size=(9, 6))
    s = rng.uniform(size=9)
    rs = RsCINRescorer(k_list=(1, 2, 3), novelty=True, contamination=0.2).fit(E[:7], scores=s[:7])
    new = rs.score_samples(E[7:], scores=s[7:])
    # loop reference: the window of a new image is itself and its k-1 nearest fitted images
    for m, i in enumerate((7, 8)):
        total = 0.0
        for k in (1, 2, 3):
            sims = [max(0.0, float(E[i] @ E[j] / np.linalg.norm(E[i]) / np.linalg.norm(E[j]))) for j in range(7)]
            keep = sorted(range(7), key=lambda j: -sims[j])[: k - 1]
            total += (s[i] + sum(sims[j] * s[j] for j in keep)) / (1 + sum(sims[j] for j in keep))
        assert -new[m] == pytest.approx(total / 3, abs=1e-12)  # on the scale of the input scores
    # a fitted image brought back as new, with k=1, keeps its value
    one = RsCINRescorer(k_list=(1,), novelty=True).fit(E[:7], scores=s[:7])
    np.testing.assert_allclose(-one.score_samples(E[:7], scores=s[:7]), one.anomaly_scores_, atol=1e-12)
    np.testing.assert_allclose(rs.decision_function(E[7:], scores=s[7:]), new + rs.threshold_)
    np.testing.assert_array_equal(rs.predict(E[7:], scores=s[7:]), np.where(-new > rs.threshold_, -1, 1))
    with pytest.raises(ValueError, match="width"):
        rs.predict(E[7:, :3], scores=s[7:])


def test_without_novelty_predict_names_the_alternative():
    from sklearn.pipeline import Pipeline

    def chain(error):  # scikit-learn's available_if raises its own error from ours
        while error is not None:
            yield str(error)
            error = error.__cause__

    assert not hasattr(RsCINRescorer(), "predict")
    for est in (RsCINRescorer(), Pipeline([("rscin", RsCINRescorer())])):
        with pytest.raises(AttributeError) as info:
            est.predict(np.ones((2, 2)))
        assert any("RsCINRescorer(novelty=True)" in m for m in chain(info.value))


def test_threshold_parameter_and_the_detectors_threshold(rng):
    emb = rng.normal(size=(10, 4)) + 2.0
    scores = np.linspace(0.1, 1.0, 10)
    rs = RsCINRescorer(threshold=0.55).fit(emb, scores=scores)
    assert rs.threshold_ == 0.55
    np.testing.assert_array_equal(rs.labels_ == -1, rs.anomaly_scores_ > 0.55)
    # "auto" runs the rule on the rescored values; the carried (detector's)
    # threshold is not applied (it misses defects RsCIN pulls down)
    batch = ImageScores(scores=scores, embeddings=emb, threshold=0.3)
    own = RsCINRescorer().fit(batch)
    assert own.threshold_ == auto_threshold(own.anomaly_scores_) != 0.3
    # an explicit threshold or contamination is used as it is
    assert RsCINRescorer(threshold=0.9).fit(batch).threshold_ == 0.9
    assert (RsCINRescorer(contamination=0.1).fit(batch).labels_ == -1).sum() == 1


@pytest.mark.parametrize("threshold", ["0.5", np.nan, np.inf, True, [0.5]])
def test_bad_thresholds_are_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        RsCINRescorer(threshold=threshold).fit(np.ones((3, 2)), scores=np.arange(3.0))


def test_a_threshold_carries_over_to_another_batch(rng):
    """Scores on the input scale: a threshold learned on one batch holds on the next."""
    emb = rng.normal(size=(30, 5)) + 2.0
    clean = rng.normal(0.3, 0.01, size=30)
    first = RsCINRescorer().fit(emb, scores=clean)
    assert (first.labels_ == 1).all()
    second = clean.copy()
    second[4] = 0.6  # one defective part in the next batch
    out = RsCINRescorer(threshold=first.threshold_).fit(emb, scores=second)
    assert out.labels_[4] == -1
    # RsCIN averages each image with its nearest neighbours, so the defective
    # image can raise a neighbour over a threshold set on clean noise; images
    # whose windows do not hold it keep their values and stay normal.
    unchanged = np.isclose(out.anomaly_scores_, first.anomaly_scores_, rtol=0, atol=1e-12)
    assert unchanged.sum() >= 20 and (out.labels_[unchanged] == 1).all()
    # the same clean batch again: nothing is flagged (min-max scaling would stretch its noise)
    again = RsCINRescorer(threshold=first.threshold_).fit(emb, scores=clean + rng.normal(0, 1e-4, 30))
    assert (again.labels_ == 1).all()


def _masks_by_hand(maps, labels, level):
    """Per image: pixels above max(level, half-way from max(level, median) to the peak), if labelled -1."""
    out = np.zeros(maps.shape, dtype=bool)
    for i, m in enumerate(maps):
        if labels[i] == -1:
            background = max(level, float(np.median(m)))
            out[i] = m > max(level, 0.5 * (background + m.max()))
    return out


def test_masks_follow_the_rescored_labels(rng):
    """anomaly_masks_ (batch) and predict_masks (new images) agree with labels_ and predict."""
    n, size = 12, 8
    maps = rng.uniform(0.0, 0.2, size=(n, size, size))
    maps[[2, 7], 3:5, 3:5] += 1.0  # two defects
    scores = maps.reshape(n, -1).max(axis=1)
    batch = ImageScores(scores=scores, embeddings=rng.normal(size=(n, 4)), anomaly_maps=maps)
    rs = RsCINRescorer(novelty=True).fit(batch)
    assert set(np.flatnonzero(rs.labels_ == -1)) == {2, 7}
    np.testing.assert_array_equal(rs.anomaly_masks_, _masks_by_hand(maps, rs.labels_, rs.threshold_))
    assert rs.anomaly_masks_[2, 3:5, 3:5].all() and rs.anomaly_masks_.sum() == 8
    new = ImageScores(scores=scores[:3], embeddings=rng.normal(size=(3, 4)), anomaly_maps=maps[:3])
    np.testing.assert_array_equal(rs.predict_masks(new), _masks_by_hand(maps[:3], rs.predict(new), rs.threshold_))
    with pytest.raises(ValueError, match="anomaly maps"):
        rs.predict_masks(ImageScores(scores=scores[:3], embeddings=rng.normal(size=(3, 4))))
    # without maps (scores of another scorer) there are no masks
    assert not hasattr(RsCINRescorer().fit(rng.normal(size=(n, 4)), scores=scores), "anomaly_masks_")
    assert not hasattr(RsCINRescorer(), "predict_masks")  # novelty only
