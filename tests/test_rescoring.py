import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

import _reference as ref
from conftest import make_tokens
from sklearn_musc import ImageScores, LNAMDTransformer, MutualScoringDetector, RsCINRescorer


@pytest.mark.parametrize("k_list", [(1, 2, 3), (1, 8, 9), (1, 7), (4,)])
def test_rscin_matches_float64_reference(rng, k_list):
    emb = rng.normal(size=(12, 10)) + 0.8  # mostly positive cosines, some negative
    scores = rng.normal(size=12)
    out = RsCINRescorer(k_list=k_list).fit(emb, scores=scores)
    assert np.abs(out.anomaly_scores_ - ref.rscin(scores, emb, k_list)).max() < 1e-12


def test_k_one_returns_minmax_scores(rng):
    scores = rng.uniform(3, 7, size=9)
    out = RsCINRescorer(k_list=(1,)).fit(rng.normal(size=(9, 4)), scores=scores)
    np.testing.assert_allclose(out.anomaly_scores_, (scores - scores.min()) / np.ptp(scores))


def test_k_larger_than_the_batch_is_clipped(rng):
    emb, scores = rng.normal(size=(4, 6)), rng.normal(size=4)
    out = RsCINRescorer(k_list=(2, 10)).fit(emb, scores=scores)
    assert out.k_list_ == (2, 4)
    np.testing.assert_allclose(out.anomaly_scores_, ref.rscin(scores, emb, (2, 4)), atol=1e-12)


def test_all_equal_scores_give_zeros(rng):
    out = RsCINRescorer(contamination=0.2).fit(rng.normal(size=(5, 3)), scores=np.full(5, 0.7))
    np.testing.assert_array_equal(out.anomaly_scores_, np.zeros(5))
    assert (out.labels_ == 1).all()


def test_duplicates_keep_the_image_itself(rng):
    emb = np.repeat(rng.normal(size=(1, 6)), 5, axis=0)  # five identical images
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    out = RsCINRescorer(k_list=(1,)).fit(emb, scores=scores)
    np.testing.assert_allclose(out.anomaly_scores_, scores / 4)


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
    # raw tokens carry no image embedding: the salient features are used
    assert rs.embedding_ == "salient"
    salient = pipe["msm"].fit_transform(pipe["lnamd"].transform(tokens)).salient_features
    expected = ref.rscin(pipe["msm"].anomaly_scores_, salient, (1, 2, 3))
    assert np.abs(rs.anomaly_scores_ - expected).max() < 1e-6
    assert rs.anomaly_scores_.argmax() == 3 and labels[3] == -1


def test_embedding_choice(rng):
    batch = ImageScores(scores=rng.normal(size=5), embeddings=rng.normal(size=(5, 3)),
                        salient_features=rng.normal(size=(5, 4)))
    assert RsCINRescorer().fit(batch).embedding_ == "image"
    assert RsCINRescorer(embedding="salient").fit(batch).embedding_ == "salient"
    with pytest.raises(ValueError, match="no such embedding"):
        RsCINRescorer(embedding="image").fit(ImageScores(scores=batch.scores))
    with pytest.raises(ValueError, match="embedding must be"):
        RsCINRescorer(embedding="cls").fit(batch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"X": np.ones((3, 2))}, "scores are required"),
        ({"X": np.ones((3, 2)), "scores": np.ones(4)}, "shape"),
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
                                         "novelty": False}
    with pytest.raises(ValueError, match="k_list"):
        RsCINRescorer(k_list=(0,)).fit(np.ones((2, 2)), scores=np.ones(2))


def test_novelty_rescores_a_new_image_with_its_nearest_fitted_images(rng):
    E = rng.normal(size=(9, 6))
    s = rng.uniform(size=9)
    rs = RsCINRescorer(k_list=(1, 2, 3), novelty=True, contamination=0.2).fit(E[:7], scores=s[:7])
    new = rs.score_samples(E[7:], scores=s[7:])
    # loop reference: the window of a new image is itself and its k-1 nearest fitted images
    low, span = s[:7].min(), np.ptp(s[:7])
    for m, i in enumerate((7, 8)):
        total = 0.0
        for k in (1, 2, 3):
            sims = [max(0.0, float(E[i] @ E[j] / np.linalg.norm(E[i]) / np.linalg.norm(E[j]))) for j in range(7)]
            keep = sorted(range(7), key=lambda j: -sims[j])[: k - 1]
            total += (s[i] + sum(sims[j] * s[j] for j in keep)) / (1 + sum(sims[j] for j in keep))
        assert -new[m] == pytest.approx((total / 3 - low) / span, abs=1e-12)
    # a fitted image brought back as new, with k=1, keeps its (normalised) value
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
