"""Novelty scoring: one new image against a fitted pool, against its yardsticks.

A pipeline (ViT -> LNAMD -> MutualScoringDetector(novelty=True)) is fitted on
a pool of N images; then new images are scored one at a time, as on a
production line (``pipe.score_samples([path])``: decoding, the forward pass,
LNAMD and the products against the pool). Yardsticks measured in the same
run, interleaved with the timed calls:

- the bare backbone forward of one preprocessed image;
- the arithmetic a new image needs, ``n_sets x N x L^2 x C`` multiply-adds,
  at the machine's float32 matrix-multiply rate (a product of the kernel's
  shape, run for as long as one scoring).

It reports the ratio time / (forward + arithmetic at the rate), the time of
the alternative (refitting the pool plus the image: the whole pipeline, and
MSM alone on the cached features) with the largest difference of the scores,
and the per-image time of a batch of new images (the products are batched).

    python benchmarks/bench_novelty.py --images ../shared/data/mvtec_ad_lowres/bottle/test \\
        --pretrained ../shared/weights/dinov2_vits14_imgfocus_fp16.safetensors --pool 60
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from bench_msm import best_time
from sklearn_musc import (LNAMDTransformer, MutualScoringDetector, ViTPatchTransformer, benjamini_hochberg,
                          conformal_pvalues)
from sklearn_musc.geometry import preprocess
from sklearn_musc.images import load_image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a folder of images (searched recursively)")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default="none", help="tag, weights file, or 'none'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone-kwargs", type=json.loads, default=None,
                        help='JSON keyword arguments of the backbone, e.g. a small random one: {"depth": 4}')
    parser.add_argument("--pool", type=int, default=60, help="pool size N")
    parser.add_argument("--batch", type=int, default=8, help="new images scored in one call")
    parser.add_argument("--features-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    paths = sorted(str(p) for p in args.images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp"})
    order = np.random.default_rng(0).permutation(len(paths))
    pool = [paths[i] for i in order[: args.pool]]
    new = [paths[i] for i in order[args.pool :]]
    if len(new) < max(args.repeat, args.batch):
        raise SystemExit(f"need at least {args.pool + max(args.repeat, args.batch)} images")
    device = torch.device("cpu")
    pretrained = None if args.pretrained == "none" else args.pretrained
    pipe = Pipeline([
        ("vit", ViTPatchTransformer(backbone=args.backbone, pretrained=pretrained, image_size=args.image_size,
                                    backbone_kwargs=args.backbone_kwargs, device="cpu", progress=False,
                                    random_state=0)),
        ("lnamd", LNAMDTransformer(device="cpu", dtype=args.features_dtype)),
        ("msm", MutualScoringDetector(novelty=True, device="cpu")),
    ])
    start = time.perf_counter()
    pipe.fit(pool)
    fit_s = time.perf_counter() - start
    vit, msm = pipe["vit"], pipe["msm"]
    _, n_sets, gh, gw, dim = msm.pool_.features.shape
    L, N = gh * gw, len(pool)
    gflop = n_sets * N * L * L * dim * 2 / 1e9
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"pool: N={N} images of {args.images}, {args.backbone} @ {args.image_size}, {n_sets} sets of "
          f"{gh}x{gw} patches x {dim} ({args.features_dtype}); fit in {fit_s:.1f} s; pool features "
          f"{msm.pool_.features.nbytes / 2**20:.0f} MiB")

    image, _ = load_image(new[0], new[0])
    x = preprocess(image, vit.input_size_, vit.mean_, vit.std_)[None].to(device)
    pipe.score_samples(new[:1])  # warm-up
    one_s, forward_s, rates = [], [], []
    for k in range(args.repeat):  # interleaved: each sees the same machine
        with torch.inference_mode():
            forward_s.append(best_time(lambda: vit._get_backbone()(x, sorted(vit.layers_)), device, 1)[0])
        seconds, _ = best_time(lambda k=k: pipe.score_samples(new[k : k + 1]), device, 1)
        one_s.append(seconds)
        rates.append(_pool_rate(L, N, dim, device, seconds))
    one, forward, rate = min(one_s), min(forward_s), max(rates)
    ideal = forward + gflop / rate
    print(f"one new image: {1000 * one:.0f} ms (best of {args.repeat}); bare forward {1000 * forward:.0f} ms + "
          f"{gflop:.1f} GFLOP at {rate:.0f} GFLOP/s = {1000 * gflop / rate:.0f} ms; ratio {one / ideal:.2f}")

    batch_s, _ = best_time(lambda: pipe.score_samples(new[: args.batch]), device, 2)
    print(f"{args.batch} new images in one call: {batch_s:.2f} s = {1000 * batch_s / args.batch:.0f} ms/image")

    # conformal decisions: the p-values of new images and Benjamini-Hochberg over them
    calibration, scores = msm.calibration_scores_, -pipe.score_samples(new[: args.batch])
    pv_s, _ = best_time(lambda: benjamini_hochberg(conformal_pvalues(calibration, scores), 0.1), device, 3)
    print(f"p-values + Benjamini-Hochberg of {args.batch} new images: {1e6 * pv_s:.0f} us, "
          f"{100 * pv_s / one:.3f} % of scoring one new image")

    # the alternative: refit the pool plus the image
    refit = clone(pipe).set_params(msm__novelty=False)
    whole_s, _ = best_time(lambda: refit.fit(pool + new[:1]), device, 1)
    refit_score = refit["msm"].anomaly_scores_[-1]
    feats = pipe[:-1].transform(pool + new[:1])
    msm_only = MutualScoringDetector(device="cpu")
    msm_s, _ = best_time(lambda: msm_only.fit(feats), device, 1)
    pool_s, _ = best_time(lambda: MutualScoringDetector(novelty=True, device="cpu").fit(feats), device, 1)
    print(f"fitting a pool of {N + 1} (MSM on cached features): {pool_s:.1f} s with its conformal calibration "
          f"(the best-match lists of the pool against itself) against {msm_s:.1f} s for a batch fit "
          f"({pool_s / msm_s:.2f}x)")
    novelty_score = -pipe.score_samples(new[:1])[0]
    print(f"refit pool + image: whole pipeline {whole_s:.1f} s ({whole_s / one:.0f}x the novelty time), "
          f"MSM alone on cached features {msm_s:.1f} s ({msm_s / one:.0f}x); scores {novelty_score:.6f} "
          f"(novelty) vs {refit_score:.6f} (refit), diff {abs(novelty_score - refit_score):.1e}")
    if abs(novelty_score - refit_score) > 1e-5:
        raise SystemExit("novelty and refit scores differ by more than 1e-5")


def _pool_rate(L, N, dim, device, duration):
    """GFLOP/s of the kernel's product: one image's L patches against a tile of pool patches."""
    a = torch.randn(L, dim, device=device)
    b = torch.randn(min(N, 32) * L, dim, device=device)
    once, _ = best_time(lambda: a @ b.T, device, 1)
    k = max(1, round(duration / once))

    def products():
        for _ in range(k):
            a @ b.T

    seconds, _ = best_time(products, device, 1)
    return 2.0 * a.shape[0] * b.shape[0] * dim * k / seconds / 1e9


if __name__ == "__main__":
    main()
