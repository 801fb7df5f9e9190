"""MVTec 3D-AD cable_gland: rgb only, 3D only, sum and CAE fusion (README "3D and 2D + 3D").

Features of the 108 test samples and the 23 validation goods are computed once
and kept in ``$MUSC_CACHE/mvtec3d`` (default ``/tmp/musc-cache``); nothing here
is part of the package.

    python studies/mvtec3d.py features   # rgb (DINOv2 ViT-S/14, 224 px) and 3D tokens, cached
    python studies/mvtec3d.py table      # the table of benchmarks/RESULTS.md
    python studies/mvtec3d.py cost       # seconds per sample of each step
"""

import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.base import clone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn_musc import (CrossModalDetector, LNAMDTransformer, MultimodalFeatures,  # noqa: E402
                          MutualScoringDetector, PointCloudPatchTransformer, RsCINRescorer, ViTPatchTransformer,
                          masks_to_input)
from sklearn_musc import kernels as geo  # noqa: E402
from sklearn_musc.datasets import load_masks, load_mvtec3d, read_xyz  # noqa: E402
from sklearn_musc.images import read_rgb  # noqa: E402
from sklearn_musc.metrics import image_ap, image_auroc, pixel_auroc, pro_score, pro_score_sampled  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "mvtec3d_cable_gland"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
CACHE = Path(os.environ.get("MUSC_CACHE", "/tmp/musc-cache")) / "mvtec3d"
SIZE = 224
VARIANTS = {"grid": dict(tokens="grid"), "groups": dict(tokens="groups")}
FINE = {"groups-p7": dict(tokens="groups", patch_size=7)}  # 32 x 32 patches: the 3D grid alone


def vit():
    return ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=str(WEIGHTS), image_size=SIZE,
                               device="cpu", progress=False)


def cloud(variant):
    params = dict(image_size=SIZE, patch_size=14, device="cpu")
    params.update({**VARIANTS, **FINE}[variant])
    return PointCloudPatchTransformer(**params)


def black_background(d):
    """The rgb images with the pixels off the object (the 3D foreground) painted black."""
    pc = cloud("grid").fit()
    out = []
    for rgb, xyz in d.samples:
        image = read_rgb(rgb)
        image[~pc.foreground(xyz)] = 0
        out.append(image)
    return out


def cached(name, make):
    path = CACHE / f"{name}.joblib"
    if path.exists():
        return joblib.load(path)
    value = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    joblib.dump(value, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return value


def data():
    test = load_mvtec3d(DATA, "cable_gland")
    val = load_mvtec3d(DATA, "cable_gland", "validation")
    masks = masks_to_input(list(load_masks(test)), (SIZE, SIZE)) > 0
    return test, val, masks


def features():
    test, val, _ = data()
    out = {}
    for split, d in (("test", test), ("val", val)):
        out[f"rgb-{split}"] = cached(f"rgb-{split}", lambda: vit().fit().transform(d.paths))
        out[f"rgbblack-{split}"] = cached(f"rgbblack-{split}", lambda: vit().fit().transform(black_background(d)))
        for v in list(VARIANTS) + list(FINE):
            out[f"{v}-{split}"] = cached(f"{v}-{split}", lambda: cloud(v).fit().transform(d.xyz_paths))
    return out


def metrics(labels, masks, scores, maps):
    return dict(i_auroc=image_auroc(labels, scores), i_ap=image_ap(labels, scores),
                p_auroc=pixel_auroc(masks, maps), pro=pro_score(masks, maps), pro_cflow=pro_score_sampled(masks, maps))


def rows(pool=False):
    """Every row: (name, metrics without RsCon, metrics with RsCon)."""
    test, _, masks = data()
    f = features()
    labels = test.labels
    lnamd = LNAMDTransformer(device="cpu")
    sets = {k: clone(lnamd).fit_transform(v) for k, v in f.items()}  # default LNAMD: r_list (1, 3, 5)
    out = []

    def single(name, key):
        msm = MutualScoringDetector(device="cpu", novelty=pool)
        if pool:
            msm.fit(sets[f"{key}-val"])
            res = msm.transform(sets[f"{key}-test"])
        else:
            res = msm.fit_transform(sets[f"{key}-test"])
        rs = RsCINRescorer().fit(res).anomaly_scores_
        out.append((name, metrics(labels, masks, res.scores, res.anomaly_maps),
                    metrics(labels, masks, rs, res.anomaly_maps)))
        return res

    single("rgb only (DINOv2 ViT-S/14)", "rgb")
    single("rgb only, background black", "rgbblack")
    for v in VARIANTS:
        single(f"3D only (FPFH, {v})", v)
    single("3D only (FPFH, groups, 32 x 32)", "groups-p7")
    for v in VARIANTS:
        for fusion in ("sum", "cae"):
            det = CrossModalDetector(fusion=fusion, device="cpu", novelty=pool)
            Xt = MultimodalFeatures(rgb=sets["rgb-test"], xyz=sets[f"{v}-test"])
            if pool:
                det.fit(MultimodalFeatures(rgb=sets["rgb-val"], xyz=sets[f"{v}-val"]))
                res = det.transform(Xt)
            else:
                res = det.fit_transform(Xt)
            rs = RsCINRescorer().fit(res).anomaly_scores_
            out.append((f"{fusion} fusion (rgb + FPFH {v})", metrics(labels, masks, res.scores, res.anomaly_maps),
                        metrics(labels, masks, rs, res.anomaly_maps)))
    return out


def table():
    for pool in (False, True):
        print("\nnovelty pool: the 23 validation goods" if pool else "\ntransductive: the 108 test samples, one batch")
        print(f"{'row':34s} | image AUROC  AP | pixel AUROC | PRO  PRO-cflow | with RsCon: image AUROC  AP")
        for name, m, r in rows(pool):
            cells = [m["i_auroc"], m["i_ap"], m["p_auroc"], m["pro"], m["pro_cflow"], r["i_auroc"], r["i_ap"]]
            print(f"{name:34s} | " + " ".join(f"{100 * c:5.2f}" for c in cells), flush=True)


def cost(n=12):
    """Seconds per sample of each step, on the first n test samples, single process."""
    test, _, _ = data()
    T = time.perf_counter
    acc = {}
    for path in test.xyz_paths[:n]:
        xyz = read_xyz(path)
        valid = (xyz != 0).any(-1)
        t = T()
        fg = geo.remove_plane(xyz, valid, border=10, ransac_distance=0.004, cut_distance=0.005, n_sample=50,
                              n_iter=1000, random_state=0)
        acc["plane"] = acc.get("plane", 0) + T() - t
        rows_, cols = np.nonzero(fg)
        t = T()
        keep = geo.largest_cluster(xyz[rows_, cols].astype(float), 0.006, 30)
        acc["cluster"] = acc.get("cluster", 0) + T() - t
        p, c, s = geo.unit_sphere(xyz[rows_, cols][keep].astype(float))
        t = T()
        geo.fpfh(p, -c / s, 0.05, 30, 0.15, 100)
        acc["fpfh"] = acc.get("fpfh", 0) + T() - t
        t = T()
        centres = geo.farthest_point_sampling(p, 1024)
        acc["fps"] = acc.get("fps", 0) + T() - t
        from scipy.spatial import cKDTree
        t = T()
        knn = cKDTree(p).query(p[centres], k=256)[1]
        geo.ipg_groups(p, knn, 128, 80, 0.01, 128)
        acc["knn + ipg"] = acc.get("knn + ipg", 0) + T() - t
    for v in VARIANTS:
        t = T()
        cloud(v).fit().transform(test.xyz_paths[:n])
        acc[f"PointCloudPatchTransformer {v} (all steps)"] = T() - t
    t = T()
    vit().fit().transform(test.paths[:n])
    acc["ViTPatchTransformer ViT-S/14 224"] = T() - t
    f = features()
    lnamd = LNAMDTransformer(device="cpu")
    for key in ("rgb", "grid"):
        sets = lnamd.fit_transform(f[f"{key}-test"])
        t = T()
        MutualScoringDetector(device="cpu").fit(sets)
        acc[f"MSM, 108 samples ({key} features)"] = (T() - t) * n / 108
    X = MultimodalFeatures(rgb=lnamd.fit_transform(f["rgb-test"]), xyz=lnamd.fit_transform(f["grid-test"]))
    for fusion in ("sum", "cae"):
        t = T()
        CrossModalDetector(fusion=fusion, device="cpu").fit(X)
        acc[f"CrossModalDetector {fusion}, 108 samples"] = (T() - t) * n / 108
    print(f"torch threads {torch.get_num_threads()}; seconds per sample over {n} samples")
    for k, v in acc.items():
        print(f"{k:50s} {v / n:.3f}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=("features", "table", "cost"))
    {"features": features, "table": table, "cost": cost}[parser.parse_args().job]()
