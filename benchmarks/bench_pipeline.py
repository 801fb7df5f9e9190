"""The whole pipeline: images per second, the split between stages, peak memory.

Stages are timed one by one (ViT incl. decoding and preprocessing, LNAMD, MSM,
RsCIN). Two yardsticks are measured in the same run: the backbone's bare
forward time on the same number of preprocessed images, and MSM's arithmetic
(n_sets x N(N-1)/2 x L^2 x C multiply-adds) at the machine's measured float32
matrix-multiply rate; the pipeline's time is reported as a ratio to their sum.
With ``--baseline``, MSM is also run in the reference's structure (per image,
cdist against all others stacked, full sort) on the same features: its time,
the speed-up of MSM and of the whole pipeline, and the largest difference of
the patch scores (must be <= 1e-5 in float32).

    # MVTec AD bottle (83 images) with real DINOv2 ViT-S/14 weights, 224 px
    python benchmarks/bench_pipeline.py --images ../shared/data/mvtec_ad_lowres/bottle/test \\
        --backbone timm:vit_small_patch14_dinov2 \\
        --pretrained ../shared/weights/dinov2_vits14_imgfocus_fp16.safetensors --image-size 224
    # synthetic batches of several sizes, each in its own process for its peak memory
    python benchmarks/bench_pipeline.py --sizes 50 100 200 400 --backbone timm:vit_small_patch14_dinov2 \\
        --pretrained none --image-size 224
    # the paper's setting on a GPU (random weights: the time does not depend on them)
    python benchmarks/bench_pipeline.py --sizes 200 --backbone open_clip:ViT-L-14-336 --pretrained none \\
        --image-size 518 --device cuda --matmul-precision bfloat16 --algorithm fused --baseline

On CUDA every stage runs once on the first 8 images before the timed run
(CUDA and cuBLAS start-up, cuDNN's and Triton's autotuning), so the times are
those of a line that is already running. The matrix-multiply rate is measured
in the run's ``--matmul-precision`` (bfloat16 operands for "bfloat16").

Synthetic batches are made once: with ``--inputs-cache FILE.npy`` the images
of the largest size are stored as one (N, H, W, 3) uint8 array and every later
run (another size, precision or algorithm) reads its first N images from it,
as in-memory arrays, so decoding is not what is timed twice;
``--make-inputs`` only makes that file (``tools/gpu_check.py`` does it while
the tests run). Stage times are printed as each stage ends and ``--json``
appends each result as soon as it is measured, so a run cut off keeps what
it measured.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _jsonl import append_json

# torch, numpy and sklearn_musc are imported where they are used: the process
# that only starts one child per size (--sizes) does not spend seconds on them.


def peak_memory(device):
    """Peak resident memory of this process (and of the GPU), in GiB."""
    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return host, gpu


def run(images, args):
    import numpy as np
    import torch

    from bench_msm import baseline_sets, best_time, matmul_rate, sync, versions
    from sklearn_musc import LNAMDTransformer, MutualScoringDetector, RsCINRescorer, ViTPatchTransformer
    from sklearn_musc.kernels import resolve_device

    device = resolve_device(args.device)
    pretrained = None if args.pretrained == "none" else args.pretrained
    # MSM's matmul precision as given; the ViT runs under bfloat16 autocast for "bfloat16" only
    matmul_precision = args.matmul_precision if device.type == "cuda" else "float32"
    vit_precision = "bfloat16" if matmul_precision == "bfloat16" else "float32"
    vit = ViTPatchTransformer(backbone=args.backbone, pretrained=pretrained, image_size=args.image_size,
                              backbone_kwargs=args.backbone_kwargs, device=str(device),
                              batch_size=args.batch_size, progress=False, precision=vit_precision).fit()
    lnamd = LNAMDTransformer(device=str(device), dtype=args.features_dtype,
                             **({"aggregation": args.aggregation} if args.aggregation else {}))
    msm = MutualScoringDetector(device=str(device), matmul_precision=matmul_precision, algorithm=args.algorithm)
    rscin = RsCINRescorer()
    n = len(images)
    times = {}

    def timed(name, fn):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times[name] = time.perf_counter() - start
        print(f"  {name}: {times[name]:.3f} s", flush=True)  # a run cut off later keeps it in its log
        return out

    if device.type == "cuda":  # warm-up, see the module's docstring
        rscin.fit(msm.fit_transform(lnamd.fit_transform(vit.transform(images[:8]))))
    tokens = timed("vit", lambda: vit.transform(images))
    feats = timed("lnamd", lambda: lnamd.fit_transform(tokens))
    scores = timed("msm", lambda: msm.fit_transform(feats))
    timed("rscin", lambda: rscin.fit(scores))
    total = sum(times.values())
    host, gpu = peak_memory(device)  # the pipeline's (warm-up included), before the yardsticks allocate

    # yardsticks: bare forward on as many preprocessed images, and MSM's arithmetic
    x = torch.randn(min(n, args.batch_size), 3, *vit.input_size_, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=vit_precision != "float32"):
        forward_batch, _ = best_time(lambda: vit._get_backbone()(x, sorted(vit.layers_)), device, 3)
    forward = forward_batch * n / len(x)
    _, n_sets, gh, gw, dim = feats.features.shape
    L = gh * gw
    gflop = n_sets * n * (n - 1) / 2 * L * L * dim * 2 / 1e9
    # sustained like MSM: products for as long as MSM ran (at most 1 s)
    rate = matmul_rate(min(n, 20) * L, dim, device, 3, duration=min(1.0, times["msm"]), precision=matmul_precision)
    extra = {}
    if args.baseline:
        base_s, base = best_time(lambda: baseline_sets(feats.features, msm.topmin_max, device), device, 1)
        extra = {
            "baseline_msm_s": base_s, "msm_speedup": base_s / times["msm"],
            "pipeline_speedup": (total - times["msm"] + base_s) / total,
            "baseline_max_abs_diff": float(np.abs(base - msm.patch_scores_).max()),
        }
    return {**extra, "kind": "pipeline", **versions(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "n_images": n, "device": str(device), "backbone": args.backbone, "image_size": vit.input_size_,
        "grid": [gh, gw], "dim": dim, "n_sets": n_sets, "matmul_precision": matmul_precision,
        "algorithm": args.algorithm, "aggregation": lnamd.aggregation,
        "features_dtype": args.features_dtype,
        "seconds": times, "total_s": total, "images_per_s": n / total, "ms_per_image": 1000 * total / n,
        "forward_s": forward, "msm_gflop": gflop, "msm_gflops": gflop / times["msm"], "matmul_gflops": rate,
        "msm_arith_s": gflop / rate,
        "ratio_to_forward_plus_arith": total / (forward + gflop / rate),
        "peak_host_gib": host, "peak_gpu_gib": gpu,
    }


def report(r, stream=sys.stdout):
    s = r["seconds"]
    print(f"N={r['n_images']} {r['backbone']} @ {r['image_size']} on {r['device']} "
          f"({r['matmul_precision']}, {r.get('algorithm', 'matmul')}, {r.get('features_dtype', 'float32')} features, "
          f"{r.get('aggregation', 'mean')} aggregation, {r['n_sets']} sets): "
          f"{r['total_s']:.2f} s = {r['images_per_s']:.2f} images/s ({r['ms_per_image']:.1f} ms/image); "
          f"vit {s['vit']:.2f} s, lnamd {s['lnamd']:.2f} s, msm {s['msm']:.2f} s, rscin {s['rscin']:.3f} s; "
          f"bare forward {r['forward_s']:.2f} s + MSM arithmetic {r['msm_arith_s']:.2f} s "
          f"({r['msm_gflop']:.0f} GFLOP at {r['matmul_gflops']:.0f} GFLOP/s): ratio "
          f"{r['ratio_to_forward_plus_arith']:.2f}; peak memory {r['peak_host_gib']:.2f} GiB host"
          + (f", {r['peak_gpu_gib']:.2f} GiB GPU" if r["device"].startswith("cuda") else ""), file=stream)
    if "baseline_msm_s" in r:
        print(f"  reference-structure MSM: {r['baseline_msm_s']:.2f} s; MSM {r['msm_speedup']:.2f}x faster, "
              f"whole pipeline {r['pipeline_speedup']:.2f}x; max abs diff of the patch scores "
              f"{r['baseline_max_abs_diff']:.2e}", file=stream)


def synthetic_images(n, size, cache=None):
    """``n`` synthetic images of ``size`` px as one (n, size, size, 3) uint8 array.

    With ``cache`` (a .npy path), the first ``n`` images of the array stored
    there, made (and stored) first when it is missing or too small.
    """
    import numpy as np

    from sklearn_musc.datasets import make_synthetic_defects

    if cache is not None and os.path.exists(cache):
        stored = np.load(cache, mmap_mode="r")
        if stored.ndim == 4 and len(stored) >= n and stored.shape[1:3] == (size, size):
            return np.array(stored[:n])
    data = make_synthetic_defects(n_images=n, n_anomalous=max(1, n // 10), image_size=size,
                                  kind="object", random_state=0)
    images = np.ascontiguousarray(np.asarray(data.images, dtype=np.uint8))
    if cache is not None:  # written whole, then renamed: never a half-written cache
        partial = f"{cache}.{os.getpid()}.partial.npy"
        np.save(partial, images)
        os.replace(partial, cache)
    return images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--sizes", type=int, nargs="+", help="synthetic batch sizes, one process each")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--pretrained", default="none", help="tag, weights file, or 'none'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone-kwargs", type=json.loads, default=None,
                        help='JSON keyword arguments of the backbone, e.g. a small random one: {"depth": 4}')
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matmul-precision", default="float32", choices=["float32", "tf32", "bfloat16"],
                        help="MutualScoringDetector(matmul_precision=...); bfloat16 also runs the ViT under "
                             "bfloat16 autocast")
    parser.add_argument("--algorithm", default="matmul", choices=["matmul", "fused"])
    parser.add_argument("--features-dtype", default="float32", choices=["float32", "float16"],
                        help="LNAMDTransformer(dtype=...): storage of the feature sets")
    parser.add_argument("--aggregation", choices=["mean", "similarity"], default=None,
                        help="LNAMDTransformer(aggregation=...); default: the estimator's default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--baseline", action="store_true", help="also time MSM in the reference's structure")
    parser.add_argument("--json", type=Path, help="append the results as JSON lines")
    parser.add_argument("--inputs-cache", type=Path, default=None,
                        help="synthetic images: read from (and, the first time, store in) this .npy file")
    parser.add_argument("--make-inputs", action="store_true",
                        help="only make the --inputs-cache file for the largest of --sizes, then stop")
    parser.add_argument("--_one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.make_inputs:
        if args.inputs_cache is None or not args.sizes:
            parser.error("--make-inputs needs --inputs-cache and --sizes")
        start = time.perf_counter()
        images = synthetic_images(max(args.sizes), args.image_size, args.inputs_cache)
        print(f"inputs: {images.shape} uint8 in {args.inputs_cache} ({time.perf_counter() - start:.1f} s)")
        return
    if args._one is not None:  # child process: one synthetic size
        result = run(synthetic_images(args._one, args.image_size, args.inputs_cache), args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = []
    if args.images is not None:
        paths = sorted(str(p) for p in args.images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp"})
        results.append(run(paths, args))
        report(results[-1])
        append_json(args.json, results[-1])
    for n in args.sizes or []:
        child = list(argv if argv is not None else sys.argv[1:])
        cmd = [sys.executable, __file__, *child, "--_one", str(n)]
        # the child's lines as they come (stage times), its result at the end
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            result = None
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
                else:
                    print(line, end="", flush=True)
        if proc.returncode != 0 or result is None:
            raise SystemExit(f"the run of {n} images failed (exit status {proc.returncode})")
        results.append(result)
        report(results[-1])
        append_json(args.json, results[-1])
    for r in results:
        if r["matmul_precision"] == "float32" and r.get("baseline_max_abs_diff", 0.0) > 1e-5:
            raise SystemExit(f"the baseline's scores differ by {r['baseline_max_abs_diff']:.2e} > 1e-5")

if __name__ == "__main__":
    main()
