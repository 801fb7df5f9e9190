"""MutualScoringDetector beyond one batch: novelty scoring of new images against
a fitted pool, known-normal references (few-shot, MuSc+), same-position matching."""

import os
import subprocess
import sys
import textwrap

import joblib
import torch
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline

import _reference as ref
from _helpers import SHARED, make_tokens
from sklearn_musc import LNAMDTransformer, MutualScoringDetector, RsCINRescorer


def features_of(tokens, r_list=(1, 3)):
    return LNAMDTransformer(r_list=r_list, device="cpu").fit_transform(tokens)


def reference_scores(feats, scored, scorers_of, **kw):
    """Mean over sets of ref.scored_by: (len(scored), h, w)."""
    f = np.asarray(feats, dtype=np.float64)
    n, n_sets, h, w, C = f.shape
    f = f.reshape(n, n_sets, h * w, C)
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    out = np.zeros((len(scored), h * w))
    for k, i in enumerate(scored):
        for s in range(n_sets):
            out[k] += ref.scored_by(f[i, s], [f[j, s] for j in scorers_of(i)], grid=(h, w), **kw)
    return (out / n_sets).reshape(len(scored), h, w)


@pytest.mark.parametrize("n_pool", [2, 4, 7, 12])
@pytest.mark.parametrize("topmin", [(0.0, 0.3), (0.2, 0.7)])
def test_a_new_image_scores_as_in_the_batch_pool_plus_it(rng, n_pool, topmin):
    tokens = make_tokens(rng, n=n_pool + 3, h=4, w=5, dim=16)
    tokens[n_pool + 1, :, 1:3, 2] += 3.0  # a defect in one new image
    feats = features_of(tokens)
    feats.input_size = (11, 13)
    pool, new = feats.take(range(n_pool)), feats.take(range(n_pool, n_pool + 3))
    det = MutualScoringDetector(novelty=True, topmin_min=topmin[0], topmin_max=topmin[1], device="cpu")
    det.fit(pool)
    out = det.transform(new)
    for k in range(3):
        alone = MutualScoringDetector(topmin_min=topmin[0], topmin_max=topmin[1], device="cpu")
        alone.fit(feats.take(list(range(n_pool)) + [n_pool + k]))
        assert abs(out.scores[k] - alone.anomaly_scores_[-1]) <= 1e-5
        assert np.abs(out.anomaly_maps[k] - alone.anomaly_maps_[-1]).max() <= 1e-5
    expected = reference_scores(feats.features, range(n_pool, n_pool + 3), lambda i: range(n_pool),
                                topmin_min=topmin[0], topmin_max=topmin[1])
    maps = np.stack([ref.bilinear_align_corners(e, (11, 13)) for e in expected])
    assert np.abs(out.anomaly_maps - maps).max() < 1e-5
    np.testing.assert_allclose(det.score_samples(new), -out.scores, atol=1e-6)
    # one at a time or together: the new images do not score each other
    one = np.array([det.score_samples(new.take([k]))[0] for k in range(3)])
    np.testing.assert_allclose(one, det.score_samples(new), atol=1e-6)


def test_decision_function_and_predict_follow_the_pool_threshold(rng):
    tokens = make_tokens(rng, n=14, h=4, w=4, dim=16, spread=0.4)
    tokens[12, :, 1:3, 1:3] += 4.0 * rng.normal(size=16).astype(np.float32)
    feats = features_of(tokens)
    det = MutualScoringDetector(novelty=True, contamination=0.1, device="cpu").fit(feats.take(range(10)))
    new = feats.take(range(10, 14))
    assert det.offset_ == -det.threshold_
    s = det.score_samples(new)
    np.testing.assert_allclose(det.decision_function(new), s + det.threshold_)
    np.testing.assert_array_equal(det.predict(new), np.where(-s > det.threshold_, -1, 1))
    assert det.predict(new)[2] == -1 and (det.predict(new) == -1).sum() == 1
    # the pool is still scored as a batch, as without novelty
    plain = MutualScoringDetector(contamination=0.1, device="cpu").fit(feats.take(range(10)))
    np.testing.assert_array_equal(det.anomaly_scores_, plain.anomaly_scores_)
    np.testing.assert_array_equal(det.fit_predict(feats.take(range(10))), plain.labels_)


def test_novelty_methods_exist_only_with_novelty(rng):
    det = MutualScoringDetector(device="cpu")
    for name in ("score_samples", "decision_function", "predict"):
        assert not hasattr(det, name)
        assert hasattr(clone(det).set_params(novelty=True), name)
    with pytest.raises(NotFittedError):
        MutualScoringDetector(novelty=True).score_samples(np.zeros((1, 1, 2, 2, 4)))
    feats = features_of(make_tokens(rng, n=5))
    det.fit(feats)
    with pytest.raises(ValueError, match="novelty=True"):
        det.transform(features_of(make_tokens(rng, n=3)))
    assert not hasattr(det, "pool_")


def test_features_made_otherwise_are_refused_naming_the_setting(rng):
    tokens = make_tokens(rng, n=6, n_layers=2, h=4, w=4, dim=16)
    feats = features_of(tokens)
    feats.backbone, feats.input_size = "timm:a", (8, 8)
    det = MutualScoringDetector(novelty=True, device="cpu").fit(feats)
    other = features_of(tokens, r_list=(1, 5))  # SNAMD (the default): the same sets, other degrees
    other.backbone, other.input_size = "timm:a", (8, 8)
    with pytest.raises(ValueError, match=r"aggregation.*\('similarity', \(1, 5\)\) vs \('similarity', \(1, 3\)\)"):
        det.predict(other)
    mean = LNAMDTransformer(r_list=(1, 3), aggregation="mean", device="cpu")
    det_mean = MutualScoringDetector(novelty=True, device="cpu").fit(mean.fit_transform(tokens))
    other = mean.set_params(r_list=(1, 5)).fit_transform(tokens)
    with pytest.raises(ValueError, match="LNAMD degree"):
        det_mean.predict(other)
    other = features_of(tokens)
    other.backbone, other.input_size = "timm:b", (8, 8)
    with pytest.raises(ValueError, match="backbone.*timm:b"):
        det.predict(other)
    other.backbone, other.input_size = "timm:a", (9, 9)
    with pytest.raises(ValueError, match="input size"):
        det.predict(other)
    with pytest.raises(ValueError, match="patch grid"):
        det.predict(features_of(make_tokens(rng, n=2, n_layers=2, h=5, w=4, dim=16)).features)
    with pytest.raises(ValueError, match="feature width"):
        det.predict(features_of(make_tokens(rng, n=2, n_layers=2, h=4, w=4, dim=8)).features)
    bad = feats.features[:2].copy()
    bad[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.predict(bad)


@pytest.mark.parametrize("reduction", ["interval", "min"])
def test_references_join_the_scorers_and_are_not_scored(rng, reduction):
    tokens = make_tokens(rng, n=11, h=3, w=4, dim=12)
    feats = features_of(tokens)
    batch, refs = feats.take(range(8)), feats.take(range(8, 11))
    det = MutualScoringDetector(reduction=reduction, device="cpu").fit(batch, references=refs)
    assert det.patch_scores_.shape == (8, 3, 4)
    expected = reference_scores(feats.features, range(8),
                                lambda i: [j for j in range(11) if j != i], reduction=reduction)
    assert np.abs(det.patch_scores_ - expected).max() < 1e-5
    # in subsets: each subset is scored by its own images and all references
    sub = MutualScoringDetector(n_subsets=2, random_state=0, device="cpu").fit(batch, references=refs)
    for idx in sub.subsets_:
        scorers = lambda i, idx=idx: [j for j in idx if j != i] + [8, 9, 10]  # noqa: E731
        assert np.abs(sub.patch_scores_[idx] - reference_scores(feats.features, idx, scorers)).max() < 1e-5


def test_musc_plus_scores_against_the_references_with_the_minimum(rng):
    tokens = make_tokens(rng, n=9, h=3, w=3, dim=12)
    feats = features_of(tokens)
    refs, test = feats.take(range(4)), feats.take(range(4, 9))
    plus = MutualScoringDetector(novelty=True, reduction="min", device="cpu").fit(refs)
    expected = reference_scores(feats.features, range(4, 9), lambda i: range(4), reduction="min")
    assert np.abs(plus.transform(test).scores - expected.reshape(5, -1).max(1)).max() < 1e-5
    # one reference (a golden sample) is a pool too: it scores new images; labels need a threshold
    one = MutualScoringDetector(novelty=True, reduction="min", device="cpu").fit(feats.take([0]))
    expected = reference_scores(feats.features, range(4, 9), lambda i: [0], reduction="min")
    out = one.transform(test)
    assert np.abs(out.scores - expected.reshape(5, -1).max(1)).max() < 1e-5 and out.anomaly_masks is None
    assert not hasattr(one, "anomaly_scores_") and one.threshold_ is None
    with pytest.raises(ValueError, match="threshold="):
        one.predict(test)
    fixed = clone(one).set_params(threshold=float(np.median(out.scores))).fit(feats.take([0]))
    np.testing.assert_array_equal(fixed.predict(test), np.where(out.scores > fixed.threshold_, -1, 1))
    assert fixed.transform(test).anomaly_masks.shape == out.anomaly_maps.shape
    with pytest.raises(ValueError, match="at least 2 images"):
        MutualScoringDetector(device="cpu").fit(feats.take([0]))


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_same_position_matching_matches_the_loop_reference(rng, radius):
    tokens = make_tokens(rng, n=7, h=4, w=5, dim=12)
    feats = features_of(tokens)
    det = MutualScoringDetector(radius=radius, device="cpu").fit(feats)
    expected = reference_scores(feats.features, range(7), lambda i: [j for j in range(7) if j != i],
                                radius=radius)
    assert np.abs(det.patch_scores_ - expected).max() < 1e-5
    # radius as large as the grid is global matching
    if radius == 2:
        wide = MutualScoringDetector(radius=4, device="cpu").fit(feats)
        glob = MutualScoringDetector(device="cpu").fit(feats)
        assert np.abs(wide.set_patch_scores_ - glob.set_patch_scores_).max() < 1e-6
    # novelty and references with a radius
    nov = MutualScoringDetector(novelty=True, radius=radius, device="cpu").fit(feats.take(range(5)))
    exp_new = reference_scores(feats.features, [5, 6], lambda i: range(5), radius=radius)
    assert np.abs(nov.transform(feats.take([5, 6])).scores - exp_new.reshape(2, -1).max(1)).max() < 1e-5
    fs = MutualScoringDetector(radius=radius, device="cpu").fit(feats.take(range(4)), references=feats.take([4, 5]))
    exp_fs = reference_scores(feats.features, range(4), lambda i: [j for j in range(6) if j != i],
                              radius=radius)
    assert np.abs(fs.patch_scores_ - exp_fs).max() < 1e-5


def test_same_position_matching_finds_a_misplaced_part(rng):
    """A part that appears at another place in one image is normal to global
    matching (the other images have it, elsewhere) but not to same-position
    matching."""
    tokens = make_tokens(rng, n=8, n_layers=1, h=6, w=6, dim=16, spread=0.3)
    tokens[3] = np.roll(tokens[3], 2, axis=2)  # image 3: everything moved right by 2 patches
    feats = features_of(tokens, r_list=(1,))
    glob = MutualScoringDetector(device="cpu").fit(feats).anomaly_scores_
    local = MutualScoringDetector(radius=0, device="cpu").fit(feats).anomaly_scores_
    assert local.argmax() == 3 and glob.argmax() != 3


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_novelty_scoring_spread_over_joblib_workers(rng, backend):
    feats = features_of(make_tokens(rng, n=13, h=3, w=3, dim=8))
    pool, new = feats.take(range(10)), feats.take(range(10, 13))
    serial = MutualScoringDetector(novelty=True, device="cpu").fit(pool).score_samples(new)
    with joblib.parallel_config(backend=backend):
        det = MutualScoringDetector(novelty=True, device="cpu", n_jobs=2).fit(pool)
        many = det.score_samples(new)  # the new images spread over 2 workers
        one = det.score_samples(new.take([1]))  # one image: the pool cut in 2 parts
    np.testing.assert_allclose(many, serial, atol=1e-6)
    np.testing.assert_allclose(one, serial[1:2], atol=1e-6)


def test_novelty_scoring_on_a_dask_cluster(rng):
    distributed = pytest.importorskip("distributed")
    feats = features_of(make_tokens(rng, n=14, h=3, w=3, dim=8))
    pool, new = feats.take(range(11)), feats.take(range(11, 14))
    det = MutualScoringDetector(novelty=True, device="cpu", n_jobs=-1).fit(pool)
    serial = clone(det).set_params(n_jobs=None).fit(pool).score_samples(new)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with joblib.parallel_config(backend="dask"), distributed.get_task_stream(client) as tasks:
            many, one = det.score_samples(new), det.score_samples(new.take([0]))
    np.testing.assert_allclose(many, serial, atol=1e-6)
    np.testing.assert_allclose(one, serial[:1], atol=1e-6)
    scoring = [t for t in tasks.data if "pool_best_matches" in t["key"]]
    assert len(scoring) >= 2 and len({t["worker"] for t in scoring}) == 2  # both workers scored


def test_a_pool_too_large_for_one_image_is_refused_with_advice(rng):
    feats = features_of(make_tokens(rng, n=12, h=4, w=4, dim=8))
    det = MutualScoringDetector(novelty=True, device="cpu").fit(feats)
    det.set_params(memory_budget=1000)
    with pytest.raises(MemoryError, match="smaller pool"):
        det.score_samples(feats.take([0]))


def test_a_pickled_pool_scores_identically_and_float16_halves_it(rng, tmp_path):
    tokens = make_tokens(rng, n=10, h=4, w=4, dim=16)
    pipe = Pipeline([("lnamd", LNAMDTransformer(device="cpu")),
                     ("msm", MutualScoringDetector(novelty=True, device="cpu"))]).fit(tokens[:8])
    joblib.dump(pipe, tmp_path / "m.joblib")
    again = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(again.score_samples(tokens[8:]), pipe.score_samples(tokens[8:]))
    half = clone(pipe).set_params(lnamd__dtype="float16").fit(tokens[:8])
    assert half["msm"].pool_.features.nbytes * 2 == pipe["msm"].pool_.features.nbytes
    assert np.abs(half.score_samples(tokens[8:]) - pipe.score_samples(tokens[8:])).max() < 2e-3


@pytest.mark.shared_data
def test_bottle_pool_scores_new_images_one_at_a_time(tmp_path):
    """Pool of 60 MVTec AD bottles, the other 23 scored one at a time; then the
    pipeline, saved with joblib and a relative weights path, loads in another
    process in another directory and scores identically."""
    from sklearn_musc import ViTPatchTransformer
    from sklearn_musc.datasets import load_mvtec
    from sklearn_musc.metrics import image_auroc

    data = load_mvtec(SHARED / "data" / "mvtec_ad_lowres", "bottle")
    order = np.random.default_rng(0).permutation(len(data.paths))
    pool, new = order[:60], order[60:]
    weights = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
    os.chdir(weights.parent)  # a relative weights path, resolved at fit
    try:
        pipe = Pipeline([
            ("vit", ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=weights.name,
                                        image_size=224, device="cpu", progress=False)),
            ("lnamd", LNAMDTransformer(device="cpu")),
            ("msm", MutualScoringDetector(novelty=True, device="cpu")),
        ]).fit([data.paths[i] for i in pool])
    finally:
        os.chdir(tmp_path)
    scores = np.array([-pipe.score_samples([data.paths[i]])[0] for i in new])
    labels = data.labels[new]
    assert 0 < labels.sum() < len(new)
    assert image_auroc(labels, scores) >= 0.98
    # predict on all 23 at once: the pool's threshold on the same scores
    np.testing.assert_array_equal(pipe.predict([data.paths[i] for i in new]),
                                  np.where(scores > pipe["msm"].threshold_, -1, 1))
    joblib.dump(pipe, tmp_path / "bottle.joblib")
    other = tmp_path / "elsewhere"
    other.mkdir()
    paths = [data.paths[i] for i in new[:3]]
    code = textwrap.dedent(f"""
        import joblib, numpy as np
        pipe = joblib.load({str(tmp_path / 'bottle.joblib')!r})
        np.save('scores.npy', pipe.score_samples({paths!r}))
    """)
    subprocess.run([sys.executable, "-c", code], cwd=other, check=True, timeout=300)
    np.testing.assert_array_equal(np.load(other / "scores.npy"), pipe.score_samples(paths))


def test_a_pipeline_with_rscin_scores_new_images(rng):
    tokens = make_tokens(rng, n=12, h=4, w=4, dim=16, spread=0.4)
    tokens[10, :, 1:3, 1:3] += 4.0 * rng.normal(size=16).astype(np.float32)
    emb = rng.normal(size=(12, 5))
    feats = features_of(tokens)
    feats.embeddings = emb
    pipe = Pipeline([("msm", MutualScoringDetector(novelty=True, device="cpu")),
                     ("rscin", RsCINRescorer(novelty=True))]).fit(feats.take(range(9)))
    new = feats.take(range(9, 12))
    msm_new = pipe["msm"].transform(new)
    expected = pipe["rscin"].score_samples(msm_new)
    np.testing.assert_array_equal(pipe.score_samples(new), expected)
    np.testing.assert_array_equal(pipe.predict(new), np.where(-expected > pipe["rscin"].threshold_, -1, 1))
    assert pipe.predict(new)[1] == -1
    # RsCIN without novelty at the end: the error names the alternative
    plain = Pipeline([("msm", MutualScoringDetector(novelty=True, device="cpu")), ("rscin", RsCINRescorer())])
    with pytest.raises(AttributeError):
        plain.fit(feats.take(range(9))).predict(new)


def test_a_pool_that_does_not_fit_is_streamed_in_tiles(rng, monkeypatch):
    from sklearn_musc import _msm

    feats = features_of(make_tokens(rng, n=14, h=4, w=4, dim=16), r_list=(1,))
    det = MutualScoringDetector(novelty=True, device="cpu").fit(feats.take(range(10)))
    new = feats.take(range(10, 14))
    whole = det.score_samples(new)
    L, C, N = 16, 16, 10
    k = _msm.interval_bounds(N + 1, 0.0, 0.3)[1]
    # room for the table of 4 new images and tiles of 2 images, not for the pool's features
    budget = 4 * (4 * N * L + 3 * 4 * k * L) * 2 + 4 * ((2 * L) ** 2 + 2 * 2 * L * C) + 64
    plan = _msm.Plan(4, L, C, k, torch.device("cpu"), budget, n_cols=N)
    assert not plan.resident and plan.block < N
    streamed = det.set_params(memory_budget=budget).score_samples(new)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_memory_mapped_features_score_without_warnings(rng, tmp_path):
    import warnings

    feats = features_of(make_tokens(rng, n=8, h=3, w=3, dim=8))
    joblib.dump(feats.features, tmp_path / "f.joblib")
    mapped = joblib.load(tmp_path / "f.joblib", mmap_mode="r")
    assert not mapped.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = MutualScoringDetector(novelty=True, device="cpu").fit(mapped[:6])
        scores = det.score_samples(mapped[6:])
    np.testing.assert_array_equal(scores, det.score_samples(np.array(mapped[6:])))
