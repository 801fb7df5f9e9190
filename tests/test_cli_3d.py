"""The command line on folders with point clouds (issue #21, item 4): pairing, modalities, outputs, bad input."""

import csv
import json
import re
import shutil
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from _helpers import SHARED
from _helpers import run_cli as run
from sklearn_musc import (CrossModalDetector, LNAMDTransformer, MultimodalFeatures, MutualScoringDetector,
                          PointCloudPatchTransformer, ViTPatchTransformer)
from sklearn_musc.cli import estimate as cli_estimate
from sklearn_musc.cli import run as cli_run

SIZE = 40  # pixels of the synthetic rgb images and clouds
SMALL = ["--image-size", "56", "--device", "cpu", "--no-progress"]
VIT = ["--backbone", "timm:vit_small_patch14_dinov2", "--pretrained", "none", *SMALL]
TOP = ("scores.csv", "summary.json", "report.html")


def cloud(seed, bump=False):
    """An organized cloud in metres: a dome on a plane 0.3 m from the sensor (a bump when ``bump``)."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2) * 0.0005
    z = 0.3 - 0.008 * np.exp(-(xx**2 + yy**2) / (2 * 0.004**2)) + 2e-5 * rng.normal(size=xx.shape)
    if bump:
        z -= 0.003 * np.exp(-((xx - 0.002) ** 2 + (yy + 0.001) ** 2) / (2 * 0.0008**2))
    xyz = np.stack([xx * z / 0.3, yy * z / 0.3, z], axis=-1).astype(np.float32)
    xyz[:2, :3] = 0  # a few pixels without a point, as a sensor leaves them
    return xyz


def save_cloud(path, xyz):
    """An xyz TIFF as MVTec 3D-AD's: H x W x 3 float32, samples contiguous."""
    tifffile.imwrite(path, xyz, photometric="rgb" if xyz.ndim == 3 else "minisblack")


def rgb(seed, bump=False):
    rng = np.random.default_rng(100 + seed)
    image = np.full((SIZE, SIZE, 3), 120, np.uint8) + rng.integers(0, 20, (SIZE, SIZE, 3), dtype=np.uint8)
    if bump:
        image[20:26, 22:28] = (220, 40, 40)
    return Image.fromarray(image)


def write_sample(folder, stem, seed, bump=False, layout="mvtec3d"):
    """One sample: ``folder/{rgb,xyz,gt}/stem`` (MVTec 3D-AD) or ``folder/stem.{png,tiff}`` (side by side)."""
    if layout == "mvtec3d":
        paths = folder / "rgb" / f"{stem}.png", folder / "xyz" / f"{stem}.tiff", folder / "gt" / f"{stem}.png"
    else:
        paths = folder / f"{stem}.png", folder / f"{stem}.tiff", None
    for p in paths:
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
    rgb(seed, bump).save(paths[0])
    save_cloud(paths[1], cloud(seed, bump))
    if paths[2] is not None:  # ground truth: never read as an input
        Image.fromarray(np.full((SIZE, SIZE), 255 * bump, np.uint8)).save(paths[2])
    return paths


@pytest.fixture
def category(tmp_path):
    """A tiny MVTec 3D-AD category: test/{good,bump}/{rgb,xyz,gt}/ and validation/good/{rgb,xyz}/."""
    root = tmp_path / "part"
    for i in range(4):
        write_sample(root / "test" / "good", f"{i:03d}", i)
    for i in range(2):
        write_sample(root / "test" / "bump", f"{i:03d}", 10 + i, bump=True)
    for i in range(3):
        write_sample(root / "validation" / "good", f"{i:03d}", 20 + i)
        shutil.rmtree(root / "validation" / "good" / "gt", ignore_errors=True)
    return root


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test's run if a model is built: bad input must be found before."""
    def fail(*args, **kwargs):
        raise AssertionError("a model ran before the inputs were checked")

    monkeypatch.setattr(cli_run, "load_backbone", fail)
    monkeypatch.setattr(cli_run, "_cloud_step", fail)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_outputs(out, root, names, input_size, pvalues=False):
    """The files of a finished run: one row, map, mask and overlay per sample, at the right sizes."""
    rows = read_csv(out / "scores.csv")
    assert [r["path"] for r in rows] == names
    assert set(rows[0]) == {"path", "score", "label", "msm_score"} | ({"pvalue"} if pvalues else set())
    assert np.isfinite([float(r["score"]) for r in rows]).all()
    assert np.isfinite([float(r["msm_score"]) for r in rows]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == len(names) and summary["input_size"] == list(input_size)
    assert (out / "report.html").read_text().count("<img") >= len(names)
    for name in names:
        size = Image.open(root / name).size
        assert Image.open(out / "overlays" / f"{name}.png").size == size  # drawn on the rgb image
        assert Image.open(out / "masks" / f"{name}.png").size == size
        amap = np.load(out / "maps" / f"{name}.npy")
        assert amap.shape == tuple(input_size) and np.isfinite(amap).all()
    return rows, summary


def test_mvtec3d_folder_scored_rgb_and_3d_by_default(category, tmp_path, capsys):
    out = tmp_path / "out"
    rc, text, err = run(capsys, "score", category / "test", "--out", out, *VIT,
                        "--references", category / "validation" / "good", "--fdr", "0.3")
    assert rc == 0, err
    names = [f"bump/rgb/{i:03d}.png" for i in range(2)] + [f"good/rgb/{i:03d}.png" for i in range(4)]
    rows, summary = assert_outputs(out, category / "test", names, (56, 56), pvalues=True)
    p = np.array([float(r["pvalue"]) for r in rows])
    assert ((p >= 1 / 4) & (p <= 1)).all() and summary["decision"]["rule"] == "benjamini-hochberg"
    assert summary["settings"]["fdr"] == 0.3
    s = summary["settings"]
    assert (s["modality"], s["fusion"], s["point_cloud"], s["patch_grid"], s["references"]) == (
        "rgb+3d", "sum", "pointcloud:fpfh-groups", [4, 4], 3)
    assert set(summary["timings_s"]) >= {"pointcloud", "vit", "lnamd", "mutual_scoring", "rscin"}
    for step in ("[1/6]", "[2/6] 3D patch tokens of 6 point clouds and of 3 references", "[3/6]", "[4/6]",
                 "[5/6] fused mutual scoring of 6 samples (sum fusion", "[6/6]"):
        assert step in err
    assert not any("gt" in p.parts for p in out.rglob("*"))  # ground truth is never an input


def test_side_by_side_files_3d_only_with_fdr(tmp_path, capsys):
    """An image and an xyz TIFF of the same stem in one folder; 3D alone, calibrated by the references."""
    folder, refs = tmp_path / "line", tmp_path / "goods"
    for i in range(5):
        write_sample(folder, f"part{i}", i, bump=i == 4, layout="side")
    for i in range(4):
        write_sample(refs, f"ok{i}", 20 + i, layout="side")
    out = tmp_path / "out"
    rc, _, err = run(capsys, "score", folder, "--out", out, "--modality", "3d", *SMALL,
                     "--references", refs, "--fdr", "0.3")
    assert rc == 0, err
    rows, summary = assert_outputs(out, folder, [f"part{i}.png" for i in range(5)], (56, 56), pvalues=True)
    assert summary["settings"]["modality"] == "3d" and summary["settings"]["backbone"] is None
    assert summary["decision"]["rule"] == "benjamini-hochberg"
    p = np.array([float(r["pvalue"]) for r in rows])
    assert ((p >= 1 / 5) & (p <= 1)).all()  # conformal p-values against 4 references
    assert "loading the backbone" not in err and "[2/5] 3D patch tokens of 5 point clouds" in err
    # the library on the same files: the point-cloud step on the --image-size grid, then LNAMD and MSM
    pc = PointCloudPatchTransformer(image_size=56, patch_size=14, device="cpu").fit()
    lnamd = LNAMDTransformer(aggregation="similarity", r_list=(1, 3, 5), device="cpu")
    msm = MutualScoringDetector(device="cpu", topmin_max=0.2, random_state=0, fdr=0.3).fit(
        lnamd.fit_transform(pc.transform([folder / f"part{i}.tiff" for i in range(5)])),
        references=lnamd.fit_transform(pc.transform([refs / f"ok{i}.tiff" for i in range(4)])))
    np.testing.assert_allclose([float(r["msm_score"]) for r in rows], msm.anomaly_scores_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p, msm.pvalues_, atol=1e-6)
    assert [r["label"] == "anomalous" for r in rows] == list(msm.labels_ == -1)


def test_cae_fusion_and_rgb_only_on_the_same_folder(category, tmp_path, capsys):
    rc, _, err = run(capsys, "score", category / "test", "--out", tmp_path / "cae", "--fusion", "cae", *VIT)
    assert rc == 0, err
    assert json.loads((tmp_path / "cae" / "summary.json").read_text())["settings"]["fusion"] == "cae"
    # rgb only: the same samples' rgb images, the clouds not needed (one removed)
    (category / "test" / "good" / "xyz" / "000.tiff").unlink()
    rc, _, err = run(capsys, "score", category / "test", "--out", tmp_path / "rgb", "--modality", "rgb", *VIT)
    assert rc == 0, err
    summary = json.loads((tmp_path / "rgb" / "summary.json").read_text())
    assert summary["settings"]["modality"] == "rgb" and summary["n_images"] == 6
    assert "3D patch tokens" not in err


def _nan(root):
    xyz = cloud(0)
    xyz[5, 7] = np.nan
    save_cloud(root / "test" / "good" / "xyz" / "001.tiff", xyz)
    return r"point cloud 'good/xyz/001\.tiff' has 1 pixels with NaN or infinite coordinates"


def _inf(root):
    xyz = cloud(0)
    xyz[3, 3, 2] = np.inf
    save_cloud(root / "test" / "good" / "xyz" / "001.tiff", xyz)
    return r"'good/xyz/001\.tiff' has 1 pixels with NaN or infinite"


def _empty(root):
    save_cloud(root / "test" / "good" / "xyz" / "001.tiff", np.zeros((SIZE, SIZE, 3), np.float32))
    return r"'good/xyz/001\.tiff' has no valid point"


def _flat(root):
    save_cloud(root / "test" / "good" / "xyz" / "001.tiff", cloud(0)[:, :, 2])
    return r"'good/xyz/001\.tiff' must be an organized point cloud of shape \(H, W, 3\), got shape \(40, 40\)"


def _size(root):
    save_cloud(root / "test" / "good" / "xyz" / "001.tiff", cloud(0)[:30])
    return r"image good/rgb/001\.png is 40 x 40 but its point cloud good/xyz/001\.tiff is 30 x 40"


def _no_xyz(root):
    (root / "test" / "good" / "xyz" / "001.tiff").unlink()
    return r"image good/rgb/001\.png has no point cloud: expected good/xyz/001\.tiff"


def _no_rgb(root):
    (root / "test" / "good" / "rgb" / "001.png").unlink()
    return r"point cloud good/xyz/001\.tiff has no rgb image: expected good/rgb/001\.png"


def _not_tiff(root):
    (root / "test" / "good" / "xyz" / "001.tiff").write_bytes(b"not a tiff")
    return r"cannot read the point cloud 'good/xyz/001\.tiff'"


@pytest.mark.parametrize("make_bad", [_nan, _inf, _empty, _flat, _size, _no_xyz, _no_rgb, _not_tiff])
def test_bad_sample_is_one_line_error_before_any_model(category, tmp_path, capsys, no_model, make_bad):
    expected = make_bad(category)
    out = tmp_path / "out"
    rc, text, err = run(capsys, "score", category / "test", "--out", out, *VIT)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sklearn-musc: error: ")
    assert re.search(expected, lines[0]), lines[0]
    assert not any((out / f).exists() for f in TOP) and not (out / "maps").exists()


def test_bad_sample_skipped_when_asked(category, tmp_path, capsys):
    _nan(category)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "score", category / "test", "--out", out, "--modality", "3d", *SMALL,
                     "--skip-unreadable")
    assert rc == 0, err
    assert "skipping sample good/rgb/001.png: point cloud 'good/xyz/001.tiff' has 1 pixels with NaN" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 5 and summary["skipped"][0]["path"] == "good/rgb/001.png"
    assert "good/rgb/001.png" not in [r["path"] for r in read_csv(out / "scores.csv")]


def test_bad_reference_is_never_skipped(category, tmp_path, capsys, no_model):
    (category / "validation" / "good" / "xyz" / "002.tiff").unlink()
    rc, _, err = run(capsys, "score", category / "test", "--out", tmp_path / "out", *VIT, "--skip-unreadable",
                     "--references", category / "validation" / "good")
    assert rc == 2 and "image rgb/002.png has no point cloud: expected xyz/002.tiff" in err


@pytest.mark.parametrize("bad", ["bump/xyz/000.tiff", "good/xyz/002.tiff"])  # timed first, or in the run
def test_cloud_with_no_object_left_fails_cleanly(category, tmp_path, capsys, bad):
    """A plane only: valid points, none left after the background plane; named, exit 2, nothing written."""
    yy, xx = (np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2) * 0.0005
    plane = np.stack([xx, yy, np.full_like(xx, 0.3)], axis=-1).astype(np.float32)
    save_cloud(category / "test" / bad, plane)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "score", category / "test", "--out", out, "--modality", "3d", *SMALL)
    errors = [line for line in err.splitlines() if line.startswith("sklearn-musc: error: ")]
    assert rc == 2 and errors == [err.strip().splitlines()[-1]]  # stage lines, then one error line
    assert bad in errors[0] and "object points left after the background removal" in errors[0]
    assert not any((out / f).exists() for f in TOP) and not (out / "maps").exists()


@pytest.mark.parametrize("argv, message", [
    (["--modality", "3d"], "--modality 3d needs point clouds, and {plain} holds none"),
    (["--fusion", "cae"], "--fusion joins rgb and 3D scores, and {plain} holds no point cloud"),
])
def test_3d_options_on_a_folder_without_clouds(tmp_path, capsys, no_model, argv, message):
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(3):
        rgb(i).save(plain / f"{i}.png")
    rc, _, err = run(capsys, "score", plain, "--out", tmp_path / "out", *argv, *VIT)
    assert rc == 2 and message.format(plain=plain) in err


@pytest.mark.parametrize("argv, message", [
    (["--fusion", "sum", "--modality", "3d"], "--fusion joins rgb and 3D scores: it needs --modality rgb+3d"),
    (["--max-subset-size", "4"], "--max-subset-size is not supported with --modality rgb+3d"),
    (["--crop-mode", "squash"], "--crop-mode squash is not supported with --modality rgb+3d"),
    (["--modality", "3d", "--layers", "3"], "--layers sets the ViT, which --modality 3d does not use"),
    (["--preset", "paper-mvtec"], "--preset paper-mvtec re-scores on the backbone's image embedding"),
])
def test_unsupported_combinations_are_usage_errors(category, tmp_path, capsys, no_model, argv, message):
    base = SMALL if "--layers" in argv else VIT  # --backbone would be refused first
    rc, _, err = run(capsys, "score", category / "test", "--out", tmp_path / "out", *base, *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_fit_and_model_refuse_point_cloud_folders(category, tmp_path, capsys, no_model):
    rc, _, err = run(capsys, "fit", category / "validation" / "good", "--model", tmp_path / "m.joblib", *VIT)
    assert rc == 2 and "holds point clouds: 'fit' takes rgb images only" in err
    assert not (tmp_path / "m.joblib").exists()
    rc, _, err = run(capsys, "score", category / "test", "--model", tmp_path / "m.joblib", "--out",
                     tmp_path / "out", "--modality", "3d", "--device", "cpu")
    assert rc == 2 and "--modality and --fusion are for a batch scored without --model" in err


def test_long_3d_run_is_announced(category, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_estimate, "LONG", 0.0)
    rc, _, err = run(capsys, "score", category / "test", "--out", tmp_path / "out", *VIT)
    assert rc == 0, err
    line = next(x for x in err.splitlines() if x.startswith("estimated time"))
    assert "3D features" in line and "per point cloud, as one of the 6 took" in line
    assert "ViT forward" in line and "fused mutual scoring" in line


# --------------------------------------------------------------------------- the shared cable_gland

ROOT = SHARED / "data" / "mvtec3d_cable_gland" / "cable_gland"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"


@pytest.mark.shared_data
def test_cable_gland_subset_as_the_library_scores_it(tmp_path, capsys):
    """8 test samples and 3 validation goods: the command's files, and its scores = the library's, step by step."""
    batch, refs = tmp_path / "cable_gland" / "test", tmp_path / "goods"
    picked = [("good", 0), ("good", 1), ("good", 2), ("bent", 0), ("cut", 0), ("hole", 0), ("thread", 0),
              ("thread", 1)]
    for defect, i in picked:
        for sub, suffix in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
            (batch / defect / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "test" / defect / sub / f"{i:03d}.{suffix}", batch / defect / sub)
    for i in range(3):
        for sub, suffix in (("rgb", "png"), ("xyz", "tiff")):
            (refs / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "validation" / "good" / sub / f"{i:03d}.{suffix}", refs / sub)
    out, size = tmp_path / "out", 112  # an 8 x 8 patch grid: small and quick
    rc, _, err = run(capsys, "score", batch, "--out", out, "--backbone", "timm:vit_small_patch14_dinov2",
                     "--weights", WEIGHTS, "--image-size", size, "--device", "cpu", "--no-progress",
                     "--references", refs)
    assert rc == 0, err
    names = sorted(f"{d}/rgb/{i:03d}.png" for d, i in picked)
    rows, _ = assert_outputs(out, batch, names, (size, size), pvalues=True)
    for name in names:
        assert Image.open(out / "overlays" / f"{name}.png").size == (200, 200)
    # the library, step by step, on the same files
    rgb_paths = [str(batch / n) for n in names]
    xyz_paths = [p.replace("/rgb/", "/xyz/").replace(".png", ".tiff") for p in rgb_paths]
    ref_rgb = [str(refs / "rgb" / f"{i:03d}.png") for i in range(3)]
    ref_xyz = [str(refs / "xyz" / f"{i:03d}.tiff") for i in range(3)]
    vit = ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=str(WEIGHTS), image_size=size,
                              device="cpu", progress=False).fit()
    pc = PointCloudPatchTransformer(image_size=size, patch_size=14, device="cpu").fit()
    lnamd = LNAMDTransformer(aggregation="similarity", r_list=(1, 3, 5), device="cpu")
    X = MultimodalFeatures(rgb=lnamd.fit_transform(vit.transform(rgb_paths)),
                           xyz=lnamd.fit_transform(pc.transform(xyz_paths)))
    R = MultimodalFeatures(rgb=lnamd.fit_transform(vit.transform(ref_rgb)),
                           xyz=lnamd.fit_transform(pc.transform(ref_xyz)))
    det = CrossModalDetector(fusion="sum", topmin_max=0.2, device="cpu").fit(X, references=R)
    np.testing.assert_allclose([float(r["msm_score"]) for r in rows], det.anomaly_scores_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([float(r["pvalue"]) for r in rows], det.pvalues_, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "maps" / f"{names[4]}.npy"), det.anomaly_maps_[4], rtol=1e-4,
                               atol=1e-5)


def test_missing_open3d_is_a_usage_error(category, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d raises ImportError
    out = tmp_path / "out"
    rc, _, err = run(capsys, "score", category / "test", "--out", out, "--modality", "3d", *SMALL)
    assert rc == 2 and "point clouds need open3d (pip install 'sklearn-musc[3d]'" in err
    assert not any((out / f).exists() for f in TOP)


def test_two_images_of_one_stem_beside_a_cloud_are_ambiguous(tmp_path, capsys, no_model):
    folder = tmp_path / "line"
    for i in range(3):
        write_sample(folder, f"part{i}", i, layout="side")
    rgb(0).save(folder / "part1.jpg")
    rc, _, err = run(capsys, "score", folder, "--out", tmp_path / "out", "--modality", "3d", *SMALL)
    assert rc == 2 and "part1.jpg and part1.png have the same stem: which one belongs to the sample is ambiguous" \
        in err
