"""RsCIN behind other libraries' scorers: torch inputs, anomalib's PatchCore, PyOD."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import _reference as ref
from sklearn_musc import ImageScores, RsCINRescorer, ViTPatchTransformer
from sklearn_musc.interop import PatchCoreCapture, salient_features


def expected_rscin(scores, emb, k_list):
    scores = np.asarray(scores, dtype=np.float64)
    return scores.min() + np.ptp(scores) * ref.rscin(scores, emb, k_list)


# ----------------------------------------------------------------- salient features


def salient_by_loops(features, scores):
    """Each image's vector at its first highest patch, unit norm, in float64 (features (n, L, C))."""
    out = []
    for f, s in zip(np.asarray(features, np.float64), np.asarray(scores, np.float64)):
        best = 0
        for p in range(len(s)):
            if s[p] > s[best]:
                best = p
        v = f[best]
        out.append(v / np.sqrt((v * v).sum()))
    return np.array(out)


@pytest.mark.parametrize("layout", ["flat", "grid", "torch-grid"])
def test_salient_features_match_the_loop(rng, layout):
    feats = rng.normal(size=(5, 12, 7))
    scores = rng.normal(size=(5, 12))
    scores[2, [3, 8]] = 10.0  # a tie goes to the first patch
    expected = salient_by_loops(feats, scores)
    if layout == "flat":
        got = salient_features(feats, scores)
    elif layout == "grid":
        got = salient_features(feats.reshape(5, 3, 4, 7), scores.reshape(5, 3, 4))
    else:
        got = salient_features(torch.tensor(feats.reshape(5, 3, 4, 7), requires_grad=True),
                               torch.tensor(scores.reshape(5, 3, 4)))
    assert got.dtype == np.float32 and got.shape == (5, 7)
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.parametrize(
    "feats, scores, match",
    [
        (np.ones((3, 4, 2)), np.ones((3, 5)), "do not match"),
        (np.ones((3, 4, 2)), np.ones((2, 4)), "do not match"),
        (np.ones((3, 4, 2)), np.ones(3), "patch_scores must have shape"),
        (np.ones((3, 4, 2)), np.array([[0, 1, np.nan, 0]] * 3), "NaN"),
    ],
)
def test_salient_features_bad_inputs(feats, scores, match):
    with pytest.raises(ValueError, match=match):
        salient_features(feats, scores)


# ----------------------------------------------------------------- inputs of RsCIN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rscin_takes_torch_tensors(rng, dtype):
    emb = torch.tensor(rng.normal(size=(9, 6)) + 0.5, dtype=dtype, requires_grad=True)
    scores = torch.tensor(rng.normal(size=9), dtype=dtype, requires_grad=True)
    got = RsCINRescorer(k_list=(1, 3)).fit(emb, scores=scores).anomaly_scores_
    expected = expected_rscin(scores.detach().double().numpy(), emb.detach().double().numpy(), (1, 3))
    assert np.abs(got - expected).max() < 1e-12


@pytest.mark.parametrize(
    "emb, scores, match",
    [
        (np.ones((5, 3)), np.ones(4), r"^scores and embeddings disagree in length: 4 scores, 5 embeddings$"),
        (np.ones((5, 3)), np.array([0, 1, np.nan, 0, np.nan]),
         r"^scores contain NaN or infinity at 2 of 5 images \(first: image 2\)$"),
        (np.array([[0, 0, 0]] * 3 + [[np.inf, 0, 0]]), np.ones(4),
         r"^embeddings contain NaN or infinity at 1 of 4 images \(first: image 3\)$"),
        (torch.ones(4, 3), torch.ones(4, 1), r"^scores must hold one value per image"),
        (torch.ones(4), torch.ones(4), r"^embeddings must have shape \(n_images, embed_dim\)"),
        (np.ones((2, 3)), ["a", "b"], "scores must be numeric"),
    ],
)
def test_rscin_refuses_inputs_that_disagree_in_one_line(emb, scores, match):
    with pytest.raises(ValueError, match=match) as info:
        RsCINRescorer().fit(emb, scores=scores)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------- anomalib's PatchCore


def small_patchcore(n_refs=3, seed=0):
    """anomalib's own PatchcoreModel on a small random ViT (no download), memory bank of ``n_refs`` images."""
    pytest.importorskip("anomalib", reason="anomalib is in the test extra (sklearn-musc[anomalib])")
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.manual_seed(seed)
    model = PatchcoreModel(layers=["blocks.1", "blocks.2"], backbone="vit_tiny_patch16_224", pre_trained=False)
    model.train()
    with torch.no_grad():
        model(torch.randn(n_refs, 3, 64, 64))
    model.memory_bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    return model.eval()


def patchcore_salient_by_loops(model, images):
    """PatchCore's top-patch embedding from anomalib's embedding and a float64 nearest-neighbour search."""
    with torch.no_grad():
        feats = {k: model.feature_pooler(v) for k, v in model.feature_extractor(images).items()}
        emb = model.generate_embedding(feats).permute(0, 2, 3, 1).flatten(1, 2).double().numpy()  # (n, L, C)
    bank = model.memory_bank.double().numpy()
    dist = np.array([[np.sqrt(((bank - patch) ** 2).sum(axis=1)).min() for patch in image] for image in emb])
    return salient_by_loops(emb, dist)


def test_rscin_behind_anomalib_patchcore_matches_the_float64_reference():
    model = small_patchcore()
    images = torch.randn(10, 3, 64, 64)
    with PatchCoreCapture(model) as capture, torch.no_grad():
        first = model(images[:6])  # two batches: captured in scoring order
        second = model(images[6:])
    assert "compute_anomaly_score" not in vars(model)  # anomalib's method again after the block
    pred_score = torch.cat([first.pred_score, second.pred_score])
    np.testing.assert_array_equal(capture.scores, pred_score.double().numpy())
    assert np.abs(capture.salient_features - patchcore_salient_by_loops(model, images)).max() < 1e-5
    for k_list in [(1, 7), (1, 2, 3)]:
        rs = RsCINRescorer(k_list=k_list).fit(capture.image_scores())
        assert rs.embedding_ == "salient"
        expected = expected_rscin(pred_score.double().numpy(), capture.salient_features, k_list)
        assert np.abs(rs.anomaly_scores_ - expected).max() < 1e-12
        # the prediction fields as they are: pred_score (a tensor) and the captured embedding
        same = RsCINRescorer(k_list=k_list).fit(torch.as_tensor(capture.salient_features), scores=pred_score)
        np.testing.assert_array_equal(same.anomaly_scores_, rs.anomaly_scores_)


def test_patchcore_capture_errors():
    with pytest.raises(TypeError, match="PatchcoreModel or Patchcore, got Linear"):
        PatchCoreCapture(torch.nn.Linear(2, 2))
    model = small_patchcore(n_refs=1)
    with PatchCoreCapture(model) as capture:
        pass
    with pytest.raises(RuntimeError, match="no scores captured"):
        capture.scores
    with PatchCoreCapture(model), pytest.raises(RuntimeError, match="already being captured"):
        with PatchCoreCapture(model):
            pass


def test_weights_load_the_same_after_anomalib_patched_timm(tmp_path, rng):
    """anomalib's ViT feature extractor makes timm's pos-embed resampler skip antialiasing, process-wide."""
    pytest.importorskip("anomalib", reason="anomalib is in the test extra (sklearn-musc[anomalib])")
    from anomalib.models.components import TimmFeatureExtractor

    def tiny(size, pretrained=None):
        return ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", image_size=size, pretrained=pretrained,
                                   backbone_kwargs=dict(depth=2, embed_dim=64, num_heads=2), device="cpu",
                                   progress=False, dtype="float32")

    source = tiny(224).fit()  # a 16 x 16 grid of position embeddings, loaded at 4 x 4 below
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model_.state_dict().items()}, path)
    images = rng.integers(0, 256, size=(2, 56, 56, 3), dtype=np.uint8)
    before = tiny(56, path).fit_transform(images).tokens
    TimmFeatureExtractor("vit_small_patch14_dinov2", layers=["blocks.1"], pre_trained=False)
    after = tiny(56, path).fit_transform(images).tokens
    np.testing.assert_array_equal(after, before)


# ----------------------------------------------------------------- PyOD


@pytest.mark.parametrize("name", ["KNN", "LOF", "IForest", "ECOD"])
def test_rscin_behind_pyod_decision_scores(rng, name):
    pytest.importorskip("pyod", reason="PyOD is in the test extra (sklearn-musc[pyod])")
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF

    X = rng.normal(size=(40, 8)) + 1.0
    X[:3] += 4.0  # three outliers
    clf = {"KNN": KNN, "LOF": LOF, "IForest": lambda: IForest(random_state=0), "ECOD": ECOD}[name]().fit(X)
    rs = RsCINRescorer(k_list=(1, 3)).fit(X, scores=clf.decision_scores_)  # the documented recipe
    assert np.abs(rs.anomaly_scores_ - expected_rscin(clf.decision_scores_, X, (1, 3))).max() < 1e-12
    # new images: PyOD's decision_function, RsCIN against the fitted batch
    new = rng.normal(size=(4, 8)) + 1.0
    rs_new = RsCINRescorer(k_list=(1, 3), novelty=True).fit(X, scores=clf.decision_scores_)
    assert rs_new.score_samples(new, scores=clf.decision_function(new)).shape == (4,)


def test_rscin_takes_an_image_scores_of_captured_fields(rng):
    scores = torch.tensor(rng.normal(size=6))
    salient = rng.normal(size=(6, 4))
    rs = RsCINRescorer(k_list=(1, 2)).fit(ImageScores(scores=scores.numpy(), salient_features=salient))
    assert np.abs(rs.anomaly_scores_ - expected_rscin(scores.numpy(), salient, (1, 2))).max() < 1e-12
