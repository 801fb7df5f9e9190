"""The whole pipeline on images: synthetic always, real MVTec AD when ../shared is there."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from _helpers import SHARED
from sklearn_musc import (
    LNAMDTransformer, MutualScoringDetector, RsCINRescorer, ViTPatchTransformer, maps_to_original,
    masks_to_input,
)
from sklearn_musc.geometry import preprocess
from sklearn_musc.images import load_image
from sklearn_musc.datasets import load_masks, load_mvtec, make_synthetic_defects

WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
TINY = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None,
            backbone_kwargs=dict(depth=4, embed_dim=64, num_heads=2), device="cpu", progress=False,
            random_state=0)


def musc(**vit):
    return Pipeline([
        ("vit", ViTPatchTransformer(**vit)),
        ("lnamd", LNAMDTransformer(device="cpu")),
        ("msm", MutualScoringDetector(device="cpu")),
        ("rscin", RsCINRescorer()),
    ])


def test_non_square_images_end_to_end():
    data = make_synthetic_defects(n_images=6, n_anomalous=1, image_size=64, random_state=0)
    images = [img[:, :50] for img in data.images]  # 64 x 50 originals
    pipe = musc(image_size=(56, 42), **TINY)
    labels = pipe.fit_predict(images)
    msm = pipe["msm"]
    assert labels.shape == (6,) and msm.patch_scores_.shape == (6, 4, 3)
    assert msm.anomaly_maps_.shape == (6, 56, 42)
    np.testing.assert_allclose(msm.anomaly_scores_, msm.anomaly_maps_.reshape(6, -1).max(1))
    assert msm.input_size_ == (56, 42) and msm.original_sizes_ == ((64, 50),) * 6
    back = maps_to_original(msm.anomaly_maps_, msm.original_sizes_, msm.input_size_)
    assert all(m.shape == (64, 50) and np.isfinite(m).all() for m in back)
    assert np.isfinite(pipe["rscin"].anomaly_scores_).all()


@pytest.mark.parametrize("crop_mode", ["center", "border", "squash"])
def test_masks_are_cropped_like_the_images(crop_mode):
    image = np.zeros((60, 90, 3), np.uint8)
    image[20:40, 50:80] = 255
    mask = image[..., 0] > 0
    pre = preprocess(load_image(image)[0], (28, 28), mean=(0, 0, 0), std=(1, 1, 1), crop_mode=crop_mode)
    pre = np.asarray(pre)[0]
    out = masks_to_input([mask], 28, crop_mode=crop_mode)[0]
    # the bright block lands where the mask lands (bicubic blurs the edge pixels)
    bright = pre > 0.5
    assert (bright & out).sum() / (bright | out).sum() > 0.95


@pytest.mark.shared_data
def test_real_bottle_with_real_dinov2_weights():
    data = load_mvtec(SHARED / "data" / "mvtec_ad_lowres", "bottle")
    pipe = musc(backbone="timm:vit_small_patch14_dinov2", pretrained=str(WEIGHTS), image_size=224,
                device="cpu", progress=False)
    pipe.fit_predict(data.paths)
    msm, rscin = pipe["msm"], pipe["rscin"]
    masks = masks_to_input(list(load_masks(data)), 224)
    image_auroc = roc_auc_score(data.labels, rscin.anomaly_scores_)
    pixel_auroc = roc_auc_score(masks.ravel(), msm.anomaly_maps_.ravel())
    print(f"bottle: image AUROC {image_auroc:.4f} "
          f"(MSM {roc_auc_score(data.labels, msm.anomaly_scores_):.4f}), pixel AUROC {pixel_auroc:.4f}")
    assert image_auroc >= 0.99
    assert pixel_auroc >= 0.96


def test_grid_search_with_cached_features(tmp_path):
    """scikit-learn's own GridSearchCV over the later steps, ViT features cached once."""
    from sklearn.model_selection import GridSearchCV

    from sklearn_musc.metrics import anomaly_scorer, image_auroc

    data = make_synthetic_defects(n_images=8, n_anomalous=2, image_size=56, random_state=1)
    pipe = musc(image_size=56, **TINY)
    pipe.memory = str(tmp_path / "cache")
    idx = np.arange(8)
    grid = {"lnamd__r_list": [(1,), (1, 3)], "msm__topmin_max": [0.3, 0.6]}
    search = GridSearchCV(pipe, grid, scoring=anomaly_scorer(image_auroc), cv=[(idx, idx)], refit=False)
    search.fit(list(data.images), data.labels)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # cached step outputs: 1 ViT (shared by all four settings) + 2 LNAMD + 4 MSM
    assert len(list((tmp_path / "cache").rglob("output.pkl"))) == 7
    best = search.cv_results_["params"][int(np.argmax(search.cv_results_["mean_test_score"]))]
    manual = musc(image_size=56, **TINY).set_params(**best)
    manual.fit_predict(list(data.images))
    assert image_auroc(data.labels, manual["rscin"].anomaly_scores_) == pytest.approx(
        search.cv_results_["mean_test_score"].max())


def test_random_init_is_seeded():
    data = make_synthetic_defects(n_images=3, n_anomalous=1, image_size=56, random_state=0)
    a = ViTPatchTransformer(image_size=56, **TINY).fit_transform(list(data.images)).tokens
    b = ViTPatchTransformer(image_size=56, **TINY).fit_transform(list(data.images)).tokens
    c = ViTPatchTransformer(image_size=56, **{**TINY, "random_state": 1}).fit_transform(list(data.images)).tokens
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(np.float32) - c.astype(np.float32)).max() > 1e-3
