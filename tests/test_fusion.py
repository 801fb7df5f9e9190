"""2D + 3D fusion: rank mapping and CAE against loop references; CrossModalDetector end to end on random
features (sum, CAE, references, novelty); MultimodalTransformer in Pipeline, clone, grid search and cache."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

import _reference_3d as ref
from sklearn_musc import (CrossModalDetector, FeatureSets, LNAMDTransformer, MultimodalFeatures,
                          MultimodalTransformer, MutualScoringDetector, PointCloudPatchTransformer, RsCINRescorer,
                          ViTPatchTransformer)
from sklearn_musc import _fusion_kernels as fk
from sklearn_musc._msm import interval_bounds


def test_rank_map_matches_the_reference_with_ties(rng):
    source = rng.normal(size=(6, 5))
    target = rng.integers(0, 4, size=(6, 5)).astype(float)  # many ties
    np.testing.assert_array_equal(fk.rank_map(source, target), ref.rank_map(source, target))
    # the result has the target's order and the source's values
    out = fk.rank_map(source, target)
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(source, axis=None))


def test_cae_tables_match_the_reference(rng):
    for _ in range(3):
        D2 = rng.random((7, 5))
        D3 = rng.random((7, 5)) * 3
        F2, F3 = fk.cae_tables(D2, D3)
        R2, R3 = ref.cae(D2, D3)
        np.testing.assert_allclose(F2, R2, atol=1e-12)
        np.testing.assert_allclose(F3, R3, atol=1e-12)


def test_distance_tables_match_the_reference(rng):
    Q = rng.normal(size=(4, 2, 6, 5))
    Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
    got = fk.distance_tables(Q, Q, True, "cpu")
    for s in range(2):
        np.testing.assert_allclose(got[s], ref.tables(Q[:, s]), atol=1e-5)
    P = rng.normal(size=(3, 2, 6, 5))
    P /= np.linalg.norm(P, axis=-1, keepdims=True)
    np.testing.assert_allclose(fk.distance_tables(Q, P, False, "cpu")[1], ref.tables(Q[:, 1], P[:, 1]), atol=1e-5)


def random_batch(rng, n=7, h=3, w=4, s2=2, s3=1):
    base2, base3 = rng.normal(size=(1, s2, h, w, 6)), rng.normal(size=(1, s3, h, w, 5))
    rgb = base2 + 0.2 * rng.normal(size=(n, s2, h, w, 6))
    xyz = base3 + 0.2 * rng.normal(size=(n, s3, h, w, 5))
    rgb[3, :, 1, 2] += 3
    xyz[3, :, 1, 2] -= 3
    meta = dict(input_size=(h * 4, w * 4), sources=tuple(f"s{i}" for i in range(n)))
    return MultimodalFeatures(
        rgb=FeatureSets(rgb.astype(np.float32), set_index=tuple((i, 0) for i in range(s2)), **meta),
        xyz=FeatureSets(xyz.astype(np.float32), set_index=tuple((i, 0) for i in range(s3)), **meta))


def reference_patch_scores(X, fusion, pool=None, topmin_max=0.2):
    """(n, h*w) fused patch scores of X's samples, scored by the others or by ``pool``."""
    r2 = [ref.tables(X.rgb.features[:, s].reshape(X.n_images, -1, X.rgb.features.shape[-1]),
                     None if pool is None else pool.rgb.features[:, s].reshape(pool.n_images, -1, 6))
          for s in range(X.rgb.features.shape[1])]
    r3 = [ref.tables(X.xyz.features[:, s].reshape(X.n_images, -1, X.xyz.features.shape[-1]),
                     None if pool is None else pool.xyz.features[:, s].reshape(pool.n_images, -1, 5))
          for s in range(X.xyz.features.shape[1])]
    R = r2[0].shape[2]
    k_min, k_max = interval_bounds(R + 1, 0.0, topmin_max)
    n, L = r2[0].shape[:2]
    out = np.zeros((n, L))
    pairs = [(0, 0), (1, 0)]  # two rgb sets, one xyz set
    for i in range(n):
        for p in range(L):
            if fusion == "sum":
                a = np.mean([ref.interval_mean(t[i, p], k_min, k_max) for t in r2])
                b = np.mean([ref.interval_mean(t[i, p], k_min, k_max) for t in r3])
                out[i, p] = a + b
        if fusion == "cae":
            acc = np.zeros(L)
            for a, b in pairs:
                F2, F3 = ref.cae(r2[a][i], r3[b][i])
                acc += [ref.interval_mean(F2[p], k_min, k_max) + ref.interval_mean(F3[p], k_min, k_max)
                        for p in range(L)]
            out[i] = acc / len(pairs)
    return out


@pytest.mark.parametrize("fusion", ["sum", "cae"])
def test_cross_modal_detector_matches_the_reference(rng, fusion):
    X = random_batch(rng)
    det = CrossModalDetector(fusion=fusion, device="cpu").fit(X)
    expected = reference_patch_scores(X, fusion)
    np.testing.assert_allclose(det.patch_scores_.reshape(len(expected), -1), expected, atol=1e-5)
    assert det.anomaly_maps_.shape == (7, 12, 16)
    np.testing.assert_allclose(det.anomaly_maps_, det.rgb_maps_ + det.xyz_maps_, atol=1e-6)
    np.testing.assert_allclose(det.anomaly_scores_, det.anomaly_maps_.reshape(7, -1).max(axis=1))
    assert int(det.anomaly_scores_.argmax()) == 3
    out = det.fit_transform(X)
    # RsCon's joined embedding: the rgb feature at the rgb peak next to the 3D feature at the 3D peak
    for i in range(7):
        p2 = np.unravel_index(det.rgb_patch_scores_[i].argmax(), (3, 4))
        p3 = np.unravel_index(det.xyz_patch_scores_[i].argmax(), (3, 4))
        f2 = X.rgb.features[i, 0][p2] / np.linalg.norm(X.rgb.features[i, 0][p2])  # the one rgb set before the last
        f3 = X.xyz.features[i, 0][p3] / np.linalg.norm(X.xyz.features[i, 0][p3])
        np.testing.assert_allclose(out.salient_features[i], np.concatenate([f2, f3]) / np.sqrt(2), atol=1e-6)
    rs = RsCINRescorer().fit(out)
    assert rs.embedding_ == "salient" and np.isfinite(rs.anomaly_scores_).all()


def test_cae_changes_the_scores_and_sum_is_the_plain_sum(rng):
    X = random_batch(rng)
    s = CrossModalDetector(fusion="sum", device="cpu").fit(X)
    c = CrossModalDetector(fusion="cae", device="cpu").fit(X)
    assert not np.allclose(s.patch_scores_, c.patch_scores_)
    # the sum's parts are what MutualScoringDetector gives each modality alone
    for part, feats in ((s.rgb_maps_, X.rgb), (s.xyz_maps_, X.xyz)):
        msm = MutualScoringDetector(device="cpu").fit(feats)
        np.testing.assert_allclose(part, msm.anomaly_maps_, atol=1e-5)


@pytest.mark.parametrize("fusion", ["sum", "cae"])
def test_references_and_novelty_score_as_in_the_joined_batch(rng, fusion):
    X = random_batch(rng, n=8)
    batch, refs = X.take(range(5)), X.take(range(5, 8))
    whole = CrossModalDetector(fusion=fusion, device="cpu").fit(X)
    with_refs = CrossModalDetector(fusion=fusion, device="cpu").fit(batch, references=refs)
    np.testing.assert_allclose(with_refs.anomaly_scores_, whole.anomaly_scores_[:5], atol=1e-5)
    pool = CrossModalDetector(fusion=fusion, novelty=True, device="cpu").fit(X.take(range(7)))
    new = pool.transform(X.take([7]))
    np.testing.assert_allclose(new.scores, whole.anomaly_scores_[[7]], atol=1e-5)
    np.testing.assert_allclose(pool.score_samples(X.take([7, 3])), -pool.transform(X.take([7, 3])).scores)
    assert pool.predict(X.take([3]))[0] in (-1, 1)
    with pytest.raises(AttributeError, match="has no attribute 'predict'") as info:
        CrossModalDetector(device="cpu").fit(X).predict
    assert "novelty=True" in str(info.value.__cause__)
    with pytest.raises(ValueError, match="fit_transform"):
        CrossModalDetector(device="cpu").fit(X).transform(X)


@pytest.mark.parametrize("fusion", ["sum", "cae"])
def test_reference_scores_pvalues_and_fdr_labels(rng, fusion):
    """A reference is scored as a batch sample is; p-values and Benjamini-Hochberg against loop references."""
    X = random_batch(rng, n=12)
    batch, refs = X.take(range(6)), X.take(range(6, 12))
    whole = CrossModalDetector(fusion=fusion, device="cpu").fit(X)
    det = CrossModalDetector(fusion=fusion, device="cpu", fdr=0.4).fit(batch, references=refs)
    np.testing.assert_allclose(det.reference_scores_, whole.anomaly_scores_[6:], atol=1e-5)
    cal = det.reference_scores_
    expected = [(1 + sum(c >= s for c in cal)) / (len(cal) + 1) for s in det.anomaly_scores_]
    np.testing.assert_allclose(det.pvalues_, expected)
    order = np.argsort(det.pvalues_, kind="stable")  # BH: the k smallest, k the largest with p_(k) <= q k / m
    k = max([i + 1 for i in range(6) if det.pvalues_[order[i]] <= 0.4 * (i + 1) / 6], default=0)
    flagged = np.zeros(6, bool)
    flagged[order[:k]] = True
    np.testing.assert_array_equal(det.labels_, np.where(flagged, -1, 1))
    np.testing.assert_array_equal(det.labels_ == -1, det.anomaly_scores_ > det.threshold_)
    np.testing.assert_allclose(det.fit_transform(batch, references=refs).pvalues, det.pvalues_)
    assert not hasattr(CrossModalDetector(device="cpu").fit(batch), "pvalues_")
    with pytest.raises(ValueError, match="fdr calibrates the batch against known-good references"):
        CrossModalDetector(device="cpu", fdr=0.1).fit(batch)
    with pytest.raises(ValueError, match="give threshold, or fdr"):
        CrossModalDetector(device="cpu", fdr=0.1, threshold=1.0).fit(batch, references=refs)


def test_mismatched_grids_and_inputs_are_refused(rng):
    X = random_batch(rng)
    bad = MultimodalFeatures(rgb=X.rgb, xyz=FeatureSets(X.xyz.features[:, :, :2], set_index=((0, 0),),
                                                          input_size=X.rgb.input_size))
    with pytest.raises(ValueError, match="patch grids differ.*patch_size"):
        CrossModalDetector(device="cpu").fit(bad)
    with pytest.raises(ValueError, match="MultimodalFeatures"):
        CrossModalDetector(device="cpu").fit(X.rgb)


def test_rgb_fitted_otherwise_than_its_clouds_is_refused(rng):
    X = random_batch(rng)
    n = X.rgb.n_images

    def with_geometry(sizes, rgb_mode):
        meta = dict(input_size=X.rgb.input_size, sources=X.rgb.sources, original_sizes=sizes)
        return MultimodalFeatures(
            rgb=FeatureSets(X.rgb.features, set_index=X.rgb.set_index, crop_mode=rgb_mode, **meta),
            xyz=FeatureSets(X.xyz.features, set_index=X.xyz.set_index, crop_mode="center", **meta))

    wide = ((30, 80),) * n  # the input is 12 x 16: squashing and centre-cropping differ
    with pytest.raises(ValueError, match=r"s0 \(30 x 80\) was fitted .*crop_mode='squash'.*crop_mode='center'"):
        CrossModalDetector(device="cpu").fit(with_geometry(wide, "squash"))
    CrossModalDetector(device="cpu").fit(with_geometry(wide, "center"))
    CrossModalDetector(device="cpu").fit(with_geometry(((24, 32),) * n, "squash"))  # the input's aspect


TINY_VIT = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56,
                backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), device="cpu", progress=False,
                random_state=0)


def dome(shift, bump=0.0):
    yy, xx = np.mgrid[-1:1:56j, -1:1:56j]
    z = 3 - 0.5 * np.exp(-((xx - shift) ** 2 + yy**2) * 3) - bump * np.exp(-((xx - 0.5) ** 2 + yy**2) * 40)
    return np.stack([xx, yy, z], axis=-1)


def test_multimodal_pipeline_clones_grid_searches_and_caches(tmp_path, rng, monkeypatch):
    calls = []
    transform = PointCloudPatchTransformer.transform

    def counting(self, X):
        calls.append(1)
        return transform(self, X)

    monkeypatch.setattr(PointCloudPatchTransformer, "transform", counting)
    samples = [(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8), dome(0.05 * i, bump=0.3 * (i == 2)))
               for i in range(5)]

    def pipe(**params):
        p = Pipeline([
            ("features", MultimodalTransformer(
                rgb=Pipeline([("vit", ViTPatchTransformer(**TINY_VIT)),
                              ("lnamd", LNAMDTransformer(r_list=(1, 3), device="cpu"))]),
                xyz=Pipeline([("pc", PointCloudPatchTransformer(image_size=56, remove_background=False,
                                                                n_groups=64)),
                              ("lnamd", LNAMDTransformer(r_list=(1, 3), device="cpu"))]))),
            ("fuse", CrossModalDetector(device="cpu")),
            ("rscon", RsCINRescorer(k_list=(1, 2))),
        ], memory=str(tmp_path))
        return p.set_params(**params)

    keys = pipe().get_params()
    assert "features__xyz__pc__feature_radius" in keys and "features__rgb__vit__image_size" in keys
    scores = {}
    for params in ParameterGrid({"fuse__fusion": ["sum", "cae"], "rscon__k_list": [(1,), (1, 2)]}):
        est = clone(pipe(**params)).fit(samples)
        scores[tuple(sorted(map(str, params.values())))] = est["rscon"].anomaly_scores_
        assert np.isfinite(est["rscon"].anomaly_scores_).all()
    assert len(calls) == 1  # the features of the batch were computed once
    assert len({tuple(np.round(v, 6)) for v in scores.values()}) > 1


def test_rgb_and_xyz_of_different_sizes_are_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    union = MultimodalTransformer(rgb=ViTPatchTransformer(**TINY_VIT), xyz=PointCloudPatchTransformer())
    with pytest.raises(ValueError, match=r"sample 0: the rgb image '.*a\.png' is 20 x 30 but the point cloud "
                                         r"xyz array 0 is 56 x 56") as info:
        union.fit_transform([(str(tmp_path / "a.png"), dome(0))])
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"xyz file '.*b\.tiff' does not exist"):
        union.fit_transform([(str(tmp_path / "a.png"), str(tmp_path / "b.tiff"))])


def test_black_background_paints_the_pixels_off_the_object():
    from sklearn.preprocessing import FunctionTransformer

    cloud = dome(0)
    cloud[:10] = 0  # no points in the first rows
    image = np.full((56, 56, 3), 200, dtype=np.uint8)
    union = MultimodalTransformer(rgb=FunctionTransformer(lambda X: np.stack(X)),
                                  xyz=PointCloudPatchTransformer(image_size=56, remove_background=False, n_groups=32),
                                  rgb_background="black")
    out = union.fit_transform([(image, cloud)])
    assert (out.rgb[0, :10] == 0).all() and (out.rgb[0, 10:] == 200).all()
    with pytest.raises(ValueError, match="rgb_background='black' needs xyz to be a PointCloudPatchTransformer"):
        MultimodalTransformer(rgb=FunctionTransformer(), xyz=FunctionTransformer(),
                              rgb_background="black").fit([(image, cloud)])
