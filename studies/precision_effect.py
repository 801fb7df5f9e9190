"""Effect of reduced precisions on real scores, emulated on the CPU.

``MutualScoringDetector(matmul_precision="tf32" | "bfloat16")`` rounds the inputs of
the matrix products (the unit-norm features) to a 10-bit (TF32) or 8-bit
(bfloat16) mantissa on CUDA tensor cores, and keeps sums, maxima and
distances in float32. The rounding is deterministic, so it can be reproduced
exactly on any machine: off CUDA the package's batch kernel
(``sklearn_musc.kernels.score_batch``, which the detector runs, and which
unlike the detector accepts these precisions on the CPU) rounds the features
the same way and multiplies them in float32; this script compares patch
scores, image scores and the metrics with the exact float32 run. Each precision is also run on feature
sets stored in float16 (``LNAMDTransformer(dtype="float16")``, which halves
their memory and their traffic to a GPU). It measures the effect on the
numbers, not the speed (that needs a GPU: benchmarks/bench_msm.py --matmul-precision on CUDA).

    python studies/precision_effect.py --data-root ../shared/data/mvtec_ad_lowres \\
        --weights ../shared/weights/dinov2_vits14_imgfocus_fp16.safetensors --categories bottle screw
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sklearn_musc import LNAMDTransformer, ViTPatchTransformer, kernels, masks_to_input
from sklearn_musc.datasets import load_masks, load_mvtec
from sklearn_musc.kernels import score_batch
from sklearn_musc.metrics import image_auroc, pixel_auroc


def patch_scores(features, matmul_precision, k_bounds):
    """Patch scores (n, h, w) of the whole batch: the mean over the sets of the package's per-set scores."""
    per_set = score_batch(features, None, range(features.shape[1]), k_bounds, torch.device("cpu"),
                          8 * 2**30, matmul_precision, "matmul")  # the rounding is emulated on the CPU
    return per_set.astype(np.float64).mean(axis=1).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="MVTec AD layout")
    parser.add_argument("--categories", nargs="+", default=["bottle"])
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)

    vit = ViTPatchTransformer(backbone=args.backbone, pretrained=args.weights, image_size=args.image_size,
                              device="cpu", progress=False).fit()
    print("| category | features | products | max abs diff patch score | max abs diff image score "
          "| image AUROC | pixel AUROC |")
    print("|---|---|---|---|---|---|---|")
    for category in args.categories:
        data = load_mvtec(args.data_root, category)
        feats = LNAMDTransformer(device="cpu").fit_transform(vit.transform(data.paths))
        masks = masks_to_input(list(load_masks(data)), vit.input_size_)
        k_bounds = kernels.interval_bounds(len(data.paths), 0.0, 0.3)
        exact = None
        for storage in (np.float32, np.float16):
            stored = feats.features.astype(storage, copy=False)  # = LNAMDTransformer(dtype=storage)
            for name in kernels.PRECISIONS:
                scores = patch_scores(stored, name, k_bounds)
                maps = F.interpolate(torch.from_numpy(scores)[:, None], size=vit.input_size_, mode="bilinear",
                                     align_corners=True)[:, 0].numpy()
                image = maps.reshape(len(maps), -1).max(1)
                if exact is None:
                    exact = scores, image
                print(f"| {category} | {np.dtype(storage).name} | {name} | {np.abs(scores - exact[0]).max():.2e} "
                      f"| {np.abs(image - exact[1]).max():.2e} | {image_auroc(data.labels, image):.4f} "
                      f"| {pixel_auroc(masks, maps):.4f} |", flush=True)


if __name__ == "__main__":
    main()
