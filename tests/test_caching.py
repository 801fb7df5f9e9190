"""Pipeline(memory=...): a changed image file is computed again, and feature sets
loaded from the cache hash like fresh ones (issue #12, item 7)."""

import os

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from sklearn_musc import (
    ImageFiles,
    LNAMDTransformer,
    MutualScoringDetector,
    PatchTokens,
    RsCINRescorer,
    ViTPatchTransformer,
)

TINY = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56,
            backbone_kwargs=dict(depth=4, embed_dim=64, num_heads=2), device="cpu",
            progress=False, random_state=0)


def _pipeline(memory):
    return Pipeline([
        ("vit", ViTPatchTransformer(**TINY)),
        ("lnamd", LNAMDTransformer(r_list=(1, 3), device="cpu")),
        ("msm", MutualScoringDetector(device="cpu")),
        ("rscin", RsCINRescorer(k_list=(1, 2))),
    ], memory=memory)


def test_a_replaced_image_file_is_not_served_from_the_cache(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(paths[-1])
    cache = tmp_path / "cache"
    first = _pipeline(str(cache)).fit(ImageFiles(paths))["rscin"].anomaly_scores_.copy()
    again = _pipeline(str(cache)).fit(ImageFiles(paths))["rscin"].anomaly_scores_
    np.testing.assert_array_equal(first, again)
    # the user replaces one photo under the same name
    Image.fromarray(np.full((70, 50, 3), 200, dtype=np.uint8)).save(paths[2])
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = _pipeline(None).fit([str(p) for p in paths])["rscin"].anomaly_scores_
    cached = _pipeline(str(cache)).fit(ImageFiles(paths))["rscin"].anomaly_scores_
    assert not np.allclose(fresh, first)
    np.testing.assert_allclose(cached, fresh, rtol=1e-6)


def test_image_files_is_a_sequence_of_paths():
    files = ImageFiles(["a.png", "b.png"])
    assert len(files) == 2 and list(files) == ["a.png", "b.png"] and files[1] == "b.png"
    assert list(files[:1]) == ["a.png"]
    assert joblib.hash(files) == joblib.hash(ImageFiles(["a.png", "b.png"]))
    with pytest.raises(TypeError, match="collection"):
        ImageFiles("a.png")


def _tokens(n=6):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 2, 6, 6, 16))
    tokens = (base + 0.5 * rng.normal(size=(n, 2, 6, 6, 16))).astype(np.float32)
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return PatchTokens(tokens=tokens, embeddings=embeddings, input_size=(84, 84),
                       original_sizes=((84, 84),) * n)


def test_feature_sets_hash_the_same_after_a_cache_round_trip(tmp_path):
    feats = LNAMDTransformer(r_list=(1, 3), device="cpu").fit_transform(_tokens())
    joblib.dump(feats, tmp_path / "f.joblib")
    loaded = joblib.load(tmp_path / "f.joblib")
    assert joblib.hash(loaded) == joblib.hash(feats)
    assert loaded.features.strides == feats.features.strides
    np.testing.assert_array_equal(loaded.features, feats.features)
    c_order = feats.take(np.arange(len(feats)))  # a C-ordered copy keeps its own layout
    c_order.features = np.ascontiguousarray(feats.features)
    joblib.dump(c_order, tmp_path / "c.joblib")
    assert joblib.hash(joblib.load(tmp_path / "c.joblib")) == joblib.hash(c_order)


def test_a_grid_fits_the_detector_once_per_setting(tmp_path, monkeypatch):
    fits = []
    original = MutualScoringDetector.fit

    def counting_fit(self, X, y=None, **kwargs):
        fits.append(self.get_params()["contamination"])
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(MutualScoringDetector, "fit", counting_fit)
    pipe = Pipeline([
        ("lnamd", LNAMDTransformer(device="cpu")),
        ("msm", MutualScoringDetector(device="cpu")),
        ("rscin", RsCINRescorer()),
    ], memory=str(tmp_path / "cache"))
    grid = ParameterGrid({"lnamd__r_list": [(1,), (1, 3)],
                          "msm__contamination": ["auto", 0.2, 0.4]})
    tokens = _tokens()
    for _ in range(2):  # e.g. a second search over the same grid, or a refit
        for params in grid:
            clone(pipe).set_params(**params).fit(tokens)
    assert len(fits) == 6  # 8 when the feature sets came back from the cache with other strides
