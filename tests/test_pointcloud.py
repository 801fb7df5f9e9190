"""PointCloudPatchTransformer and its kernels against float64 loop references; Point-MAE in eval mode; bad input."""

import pickle

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from sklearn.base import clone
from sklearn.pipeline import Pipeline

import _reference_3d as ref
from sklearn_musc import LNAMDTransformer, MutualScoringDetector, PointCloudPatchTransformer
from sklearn_musc import _pointcloud_kernels as geo
from sklearn_musc._point_mae import PointMAEEncoder
from sklearn_musc.datasets import read_xyz


def bumpy_surface(rng, n=400):
    """Points of a wavy surface (curved and flat parts)."""
    xy = rng.uniform(-1, 1, size=(n, 2))
    z = np.where(xy[:, 0] > 0, 0.4 * np.sin(3 * xy[:, 0]) * np.cos(3 * xy[:, 1]), 0.0)
    return np.column_stack([xy, z])


def scene(h=40, w=48, box=(12, 28, 14, 34), height=0.05, hole=None):
    """An organized cloud: a tilted table plane 1 m from the sensor with a box standing on it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (xx - w / 2) * 0.002, (yy - h / 2) * 0.002
    z = 1.0 + 0.1 * x + 0.05 * y
    r0, r1, c0, c1 = box
    top = np.zeros((h, w), bool)
    top[r0:r1, c0:c1] = True
    bump = height * (1 + 0.3 * np.sin(xx / 3) * np.cos(yy / 4))
    z = np.where(top, z - bump, z)
    if hole is not None:
        top[hole] = False
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    if hole is not None:
        xyz[hole] = 0
    return xyz, top


def test_ipg_matches_the_loop_reference_and_groups_are_distinct(rng):
    points = bumpy_surface(rng)
    centres = geo.farthest_point_sampling(points, 20)
    knn = cKDTree(points).query(points[centres], k=60)[1]
    groups, curvature = geo.ipg_groups(points, knn, group_size=30, start_size=12, flat_threshold=0.01,
                                       curvature_k=25)
    assert (curvature >= 0.01).any() and (curvature < 0.01).any()  # both branches are exercised
    for g in range(len(centres)):
        expected = ref.ipg(points, knn[g], 30, 12, 0.01, 25)
        assert sorted(groups[g]) == sorted(expected)
        assert len(set(groups[g])) == 30  # de-duplicated: no candidate taken twice
    for g in np.flatnonzero(curvature < 0.01):
        assert list(groups[g]) == list(knn[g, :30])


def test_surface_variation_fps_and_interpolation_match_the_references(rng):
    points = bumpy_surface(rng, 120)
    knn = cKDTree(points).query(points[:10], k=15)[1]
    got = geo.surface_variation(points, knn)
    np.testing.assert_allclose(got, [ref.surface_variation(points[row]) for row in knn], atol=1e-12)
    assert list(geo.farthest_point_sampling(points, 12)) == ref.farthest_point_sampling(points, 12)
    centres = points[:7]
    values = rng.normal(size=(7, 2, 3))
    np.testing.assert_allclose(geo.interpolate_to_points(points[20:40], centres, values),
                               ref.interpolate(points[20:40], centres, values), atol=1e-10)


@pytest.mark.parametrize("shape, aspect", [((13, 17), 1.0), ((20, 9), 0.5), ((16, 16), 1.0)])
def test_pool_to_grid_matches_the_loop_reference(rng, shape, aspect):
    mask = rng.random(shape) < 0.6
    per_pixel = rng.normal(size=shape + (5,))
    rows, cols = np.nonzero(mask)
    got = geo.pool_to_grid(rows, cols, per_pixel[rows, cols], shape, (4, 3), aspect)
    box = geo.crop_box(shape, aspect)
    expected = ref.pool_to_grid(mask, per_pixel, (4, 3), box)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert box[1] - box[0] == round((box[3] - box[2]) * aspect) or box[3] - box[2] == shape[1]


def test_plane_removal_and_largest_cluster_keep_the_object():
    xyz, top = scene()
    valid = (xyz != 0).any(-1)
    fg = geo.remove_plane(xyz, valid, border=5, ransac_distance=0.004, cut_distance=0.005, n_sample=50,
                          n_iter=200, random_state=0)
    np.testing.assert_array_equal(fg, top)
    # a stray blob far from the object is dropped, the object kept
    pts = np.concatenate([xyz[top], np.full((40, 3), 2.0) + 0.0001 * np.arange(40)[:, None]])
    keep = geo.largest_cluster(pts, eps=0.006, min_points=5)
    assert keep[: top.sum()].all() and not keep[top.sum():].any()


def test_transformer_shapes_background_channel_and_determinism():
    xyz, top = scene(hole=(slice(18, 22), slice(20, 24)))
    pc = PointCloudPatchTransformer(tokens="grid", image_size=48, patch_size=8, normal_radius=0.1,
                                    feature_radius=0.3)
    out = pc.fit_transform([xyz, xyz])
    assert out.tokens.shape == (2, 1, 6, 6, 34) and out.tokens.dtype == np.float32
    assert out.backbone == "pointcloud:fpfh-grid" and out.original_sizes == ((40, 48), (40, 48))
    np.testing.assert_array_equal(out.tokens[0], out.tokens[1])
    # the last channel is each cell's background fraction (the frame is cropped to 40 x 40, centred)
    mask = pc.foreground(xyz)
    np.testing.assert_array_equal(mask, top)
    frac = 1 - ref.pool_to_grid(mask, np.zeros(mask.shape + (1,)), (6, 6), (0, 40, 4, 44))[..., 1]
    np.testing.assert_allclose(1 - out.tokens[0, 0, ..., -1], frac, atol=1e-6)
    assert np.isfinite(out.tokens).all()
    again = clone(pc).fit().transform([xyz])
    np.testing.assert_array_equal(again.tokens[0], out.tokens[0])


def test_group_tokens_are_group_means_put_back_on_the_points():
    xyz, _ = scene()
    pc = PointCloudPatchTransformer(tokens="groups", image_size=48, patch_size=8, n_groups=16, group_size=20,
                                    normal_radius=0.1, feature_radius=0.3).fit()
    out = pc.transform([xyz])
    assert out.backbone == "pointcloud:fpfh-groups" and out.tokens.shape == (1, 1, 6, 6, 34)
    grid = pc.set_params(tokens="grid").fit().transform([xyz])
    assert not np.allclose(out.tokens, grid.tokens)


def test_point_mae_runs_in_eval_mode_and_a_sample_does_not_depend_on_its_batch(tmp_path):
    a, _ = scene()
    b, _ = scene(box=(8, 30, 10, 40), height=0.08)
    pc = PointCloudPatchTransformer(features="point_mae", tokens="groups", image_size=48, patch_size=8,
                                    n_groups=16, group_size=24, layers=(1, 3), random_state=0, device="cpu")
    pc.fit()
    assert not pc.model_.training
    assert all(not m.training for m in pc.model_.modules())
    alone = pc.transform([a]).tokens
    batch = pc.transform([b, a, b]).tokens
    assert alone.shape == (1, 2, 6, 6, 385)
    np.testing.assert_array_equal(alone[0], batch[1])  # BatchNorm uses its running statistics
    np.testing.assert_array_equal(pc.transform([a]).tokens, alone)  # no drop-path or dropout at inference
    # the same seed builds the same random encoder; a pickle keeps random weights
    np.testing.assert_array_equal(clone(pc).fit().transform([a]).tokens, alone)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pc)).transform([a]).tokens, alone)
    # a checkpoint in the Point-MAE layout (prefix, nested block names) is loaded strictly
    state = {"MAE_encoder." + k.replace("blocks.", "blocks.blocks.", 1): v for k, v in pc.model_.state_dict().items()}
    torch.save({"base_model": state, "optimizer": {}}, tmp_path / "ckpt.pth")
    loaded = clone(pc).set_params(checkpoint=str(tmp_path / "ckpt.pth"), random_state=None).fit()
    np.testing.assert_array_equal(loaded.transform([a]).tokens, alone)
    del state["MAE_encoder.norm.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*missing.*norm\.weight"):
        clone(pc).set_params(checkpoint=str(tmp_path / "bad.pth")).fit()


def test_point_mae_encoder_layers_are_the_blocks_asked_for():
    torch.manual_seed(0)
    enc = PointMAEEncoder(width=32, depth=3, num_heads=2).eval()
    g, c = torch.randn(1, 5, 8, 3), torch.randn(1, 5, 3)
    with torch.no_grad():
        outs = enc(g, c, (0, 2))
        x = enc.encoder(g)
        pos = enc.pos_embed(c)
        expected = []
        for i, block in enumerate(enc.blocks):
            x = block(x + pos)
            expected.append(enc.norm(x))
    torch.testing.assert_close(outs[0], expected[0])
    torch.testing.assert_close(outs[1], expected[2])


def test_pipeline_caches_the_point_cloud_features(tmp_path, monkeypatch):
    xyz, _ = scene()
    other, _ = scene(box=(10, 30, 12, 36), height=0.06)
    clouds = [xyz, other, xyz, other]
    calls = []
    transform = PointCloudPatchTransformer.transform

    def counting(self, X):
        calls.append(1)
        return transform(self, X)

    monkeypatch.setattr(PointCloudPatchTransformer, "transform", counting)

    def pipe():
        pc = PointCloudPatchTransformer(tokens="grid", image_size=48, patch_size=8, normal_radius=0.1,
                                        feature_radius=0.3)
        return Pipeline([("pc", pc),
                         ("lnamd", LNAMDTransformer(device="cpu")), ("msm", MutualScoringDetector(device="cpu"))],
                        memory=str(tmp_path))

    first = pipe().fit(np.stack(clouds))["msm"].anomaly_scores_
    second = pipe().fit(np.stack(clouds))["msm"].anomaly_scores_
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)


def test_bad_point_clouds_get_one_line_errors_naming_them(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    xyz, _ = scene()
    nan = xyz.copy()
    nan[3, 4, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tiff", nan, photometric="minisblack")
    pc = PointCloudPatchTransformer(image_size=48, patch_size=8).fit()
    cases = [
        ([str(tmp_path / "nan.tiff")], ValueError, r"nan\.tiff.*NaN or infinite.*row 3, column 4"),
        ([str(tmp_path / "missing.tiff")], FileNotFoundError, r"missing\.tiff.*does not exist"),
        ([np.zeros((10, 10, 3))], ValueError, r"<array 0>.*no valid point"),
        ([xyz[..., 0]], ValueError, r"<array 0>.*\(H, W, 3\).*\(40, 48\)"),
        ([np.where(np.isinf(xyz), 0, xyz) * np.array([1, 1, np.inf], np.float32)], ValueError, "infinite"),
    ]
    for X, error, pattern in cases:
        with pytest.raises(error, match=pattern) as info:
            pc.transform(X)
        assert "\n" not in str(info.value)
    flat = np.stack(list(np.meshgrid(np.linspace(0, 0.1, 40), np.linspace(0, 0.1, 40))) + [np.ones((40, 40))], -1)
    with pytest.raises(ValueError, match=r"<array 0> has 0 object points left after the background removal"):
        pc.transform([flat])
    with pytest.raises(ValueError, match="tokens='groups'"):
        PointCloudPatchTransformer(features="point_mae", tokens="grid").fit()
    assert read_xyz(xyz).dtype == np.float32
