"""RsCIN behind your own scorer: anomalib's PatchCore and PyOD's detectors, before and after.

``RsCINRescorer`` needs one score and one embedding per image, whatever
computed them. This script scores one MVTec AD category with

- anomalib's own PatchCore (``PatchcoreModel``: its feature extractor,
  memory bank, nearest-neighbour search and image score), few-shot: a memory
  bank of ``--shots`` good images drawn at random and removed from the
  scored set, with the DINOv2 ViT-S/14 weights of ``../shared`` loaded into
  anomalib's ``TimmFeatureExtractor``; RsCIN behind it on PatchCore's
  embedding of each image's most anomalous patch
  (``sklearn_musc.interop.PatchCoreCapture``);
- PyOD's KNN, LOF, IForest and ECOD on the image embeddings (the ViT's class
  token, from ``ViTPatchTransformer``) of the scored set, unsupervised; RsCIN
  behind them is one line: ``RsCINRescorer().fit(X, scores=clf.decision_scores_)``;

and prints image AUROC and AP before and after RsCIN, with the seconds of the
scorer and of RsCIN. Needs ``pip install "sklearn-musc[anomalib,pyod]"``.

    python examples/rscin_behind_your_scorer.py                          # bottle, 4 shots
    python examples/rscin_behind_your_scorer.py --category screw --shots 8
    python examples/rscin_behind_your_scorer.py --n-images 12 --shots 1 --image-size 112  # quick (the tests)

Without ``../shared`` (or ``--data-root``) it scores a synthetic batch
(``make_synthetic_defects``); without the weights file the backbones are
randomly initialised (the numbers then show the mechanics only).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sklearn_musc import RsCINRescorer, ViTPatchTransformer
from sklearn_musc.datasets import load_mvtec, make_synthetic_defects
from sklearn_musc.interop import PatchCoreCapture
from sklearn_musc.metrics import image_ap, image_auroc
from sklearn_musc.geometry import preprocess
from sklearn_musc.images import load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA_ROOT = SHARED / "data" / "mvtec_ad_lowres"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
BACKBONE = "vit_small_patch14_dinov2"
# ViT blocks of PatchCore's memory bank, chosen on the 8 tuning categories (studies/scorers.py)
LAYERS = ["blocks.8", "blocks.11"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's, as timm gives them


def load_batch(args):
    """Images (paths or arrays) and labels (1 = defective) of the category, or of a synthetic batch."""
    root = args.data_root or (DATA_ROOT if DATA_ROOT.is_dir() else None)
    if root is None:
        print(f"{DATA_ROOT} is absent: scoring a synthetic batch instead")
        data = make_synthetic_defects(n_images=24, n_anomalous=8, image_size=args.image_size, kind="object",
                                      random_state=0)
        return list(data.images), np.asarray(data.labels)
    bunch = load_mvtec(root, args.category)
    return list(bunch.paths), np.asarray(bunch.labels)


def subset(labels, n_images, shots, rng):
    """``n_images`` indices, good and defective in the folder's proportions, at least ``shots + 2`` good."""
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n_good = min(len(good), max(shots + 2, round(n_images * len(good) / len(labels))))
    return np.sort(np.concatenate([rng.choice(good, n_good, replace=False),
                                   rng.choice(bad, min(len(bad), n_images - n_good), replace=False)]))


def patchcore(weights):
    """anomalib's PatchCore torch model with the DINOv2 ViT-S/14 weights in its own feature extractor."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from safetensors.torch import load_file

    model = PatchcoreModel(layers=LAYERS, backbone=BACKBONE, pre_trained=False)  # nothing downloaded
    if weights is not None:  # a timm state dict for the model at 518 px; anomalib resizes to the input
        state = {k: v.float() for k, v in load_file(weights).items()}
        model.feature_extractor.feature_extractor.load_state_dict(state)
    return model


def report(name, y, scores, embeddings, seconds, rows):
    t0 = time.perf_counter()
    after = RsCINRescorer().fit(embeddings, scores=scores).anomaly_scores_  # windows (1, 7), the defaults
    rs_seconds = time.perf_counter() - t0
    rows.append((name, image_auroc(y, scores), image_auroc(y, after), image_ap(y, scores), image_ap(y, after),
                 seconds, rs_seconds))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=None, help=f"MVTec AD root (default {DATA_ROOT})")
    p.add_argument("--category", default="bottle")
    p.add_argument("--weights", type=Path, default=WEIGHTS, help="DINOv2 ViT-S/14 weights file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--shots", type=int, default=4, help="good images in PatchCore's memory bank")
    p.add_argument("--n-images", type=int, default=None, help="use this many images of the category (a quick run)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images, labels = load_batch(args)
    if args.n_images is not None:
        keep = subset(labels, args.n_images, args.shots, rng)
        images, labels = [images[i] for i in keep], labels[keep]
    weights = args.weights if args.weights.is_file() else None
    if weights is None:
        print(f"{args.weights} is absent: the backbones are RANDOMLY INITIALISED")
    refs = np.sort(rng.choice(np.flatnonzero(labels == 0), args.shots, replace=False))
    scored = np.setdiff1d(np.arange(len(labels)), refs)
    y = labels[scored]
    size = (args.image_size, args.image_size)
    pixels = torch.stack([preprocess(load_image(im)[0], size, MEAN, STD) for im in images])
    rows = []

    # anomalib's PatchCore: memory bank from the references (its training forward), then its scoring forward
    model = patchcore(weights)
    t0 = time.perf_counter()
    model.train()
    with torch.no_grad():
        model(pixels[refs])
    model.memory_bank = torch.vstack(model.embedding_store)  # all patches: a few-shot bank needs no coreset
    model.embedding_store.clear()
    model.eval()
    with PatchCoreCapture(model) as capture, torch.no_grad():
        for start in range(0, len(scored), 16):
            out = model(pixels[scored[start:start + 16]])  # InferenceBatch(pred_score, anomaly_map)
    seconds = time.perf_counter() - t0
    report(f"PatchCore, {args.shots} shots", y, capture.scores, capture.salient_features, seconds, rows)
    assert out.pred_score.shape[0] == len(scored[start:start + 16])

    # PyOD on the class tokens of the scored images (fitted on them, no labels)
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF

    vit = ViTPatchTransformer(backbone=f"timm:{BACKBONE}", pretrained=None if weights is None else str(weights),
                              image_size=args.image_size, layers=(11,), device="cpu", progress=False)
    X = vit.fit_transform([images[i] for i in scored]).embeddings
    for name, make in (("KNN", KNN), ("LOF", LOF), ("IForest", lambda: IForest(random_state=args.seed)),
                       ("ECOD", ECOD)):
        t0 = time.perf_counter()
        clf = make().fit(X)
        report(f"PyOD {name}", y, clf.decision_scores_, X, time.perf_counter() - t0, rows)

    print(f"{args.category if args.data_root or DATA_ROOT.is_dir() else 'synthetic'}: {len(scored)} images scored "
          f"({int(y.sum())} defective), RsCIN windows (1, 7)")
    print(f"{'scorer':20s} {'AUROC':>7s} {'+RsCIN':>7s} {'AP':>7s} {'+RsCIN':>7s} {'scorer s':>9s} {'RsCIN s':>8s}")
    for name, a0, a1, p0, p1, s0, s1 in rows:
        print(f"{name:20s} {100 * a0:7.1f} {100 * a1:7.1f} {100 * p0:7.1f} {100 * p1:7.1f} {s0:9.3f} {s1:8.4f}")


if __name__ == "__main__":
    main()
