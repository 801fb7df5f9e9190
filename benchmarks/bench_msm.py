"""Mutual scoring: this library against the reference's structure, in one run.

The baseline follows the authors' code: for each image, ``torch.cdist``
against all other images stacked, the row minima per other image, a full sort
and the interval average. Both are run on the same unit-norm features of one
feature set; the script checks they agree (max abs diff <= 1e-5), measures
the machine's float32 matrix-multiply rate on a product of the kernel's shape,
and prints times, the speed-up and GFLOP/s, counting the work that is needed:
N(N-1)/2 image pairs x L^2 x C multiply-adds.

    python benchmarks/bench_msm.py                      # N=64, L=196, C=768 on the CPU
    python benchmarks/bench_msm.py --n 200 --patches 1369 --dim 1024 --device cuda
    python benchmarks/bench_msm.py --n 200 --patches 1369 --dim 1024 --device cuda \
        --matmul-precision bfloat16 --algorithm fused     # the Triton kernel (autotuned in the warm-up)
    python benchmarks/bench_msm.py --n 100 --patches 256 --dim 384 --radius 0 1 2 3 --skip-baseline
        # same-position matching against global matching, in the same run
    python benchmarks/bench_msm.py --n 100 --patches 256 --dim 384 --repeat-ratio 0.5 --skip-baseline
        # the repeated-defect filter against plain scoring, in the same run

The matrix-multiply rate is measured in the run's precision (bfloat16
operands for "bfloat16", TF32 tensor cores for "tf32"); ``--gemm 8192`` also
measures a square dense product of that size, the card's familiar peak.
``--json FILE`` appends the numbers as JSON lines (the scoring as soon as it
is timed, the reference structure's on a second line), as
``tools/gpu_check.py`` collects them.
"""

import argparse
import contextlib
import math
import platform
import time

import numpy as np
import torch

from _jsonl import append_json
from sklearn_musc import MutualScoringDetector, kernels
from sklearn_musc.kernels import resolve_device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device, repeat):
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), out


@contextlib.contextmanager
def _tf32(enabled):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def matmul_rate(rows, dim, device, repeat, duration=0.0, precision="float32", cols=None):
    """GFLOP/s of (rows x dim) @ (dim x cols) products (``cols`` defaults to
    ``rows``): the best of ``repeat`` samples, each running products back to
    back for about ``duration`` seconds (the length of what it is compared
    with: on a shared machine short bursts run faster than sustained work).

    ``precision`` is a ``matmul_precision``: "bfloat16" multiplies bfloat16
    operands, "tf32" float32 ones on TF32 tensor cores (CUDA), "float32"
    exact float32 products.
    """
    cols = rows if cols is None else cols
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    a = torch.randn(rows, dim, device=device).to(dtype)
    b = torch.randn(cols, dim, device=device).to(dtype)
    with _tf32(precision == "tf32"):
        once, _ = best_time(lambda: a @ b.T, device, 1)  # warm-up and estimate
        k = max(1, round(duration / once))

        def products():
            for _ in range(k):
                a @ b.T

        seconds, _ = best_time(products, device, repeat)
    return 2.0 * rows * cols * dim * k / seconds / 1e9


def versions():
    """torch, CUDA and Triton versions and the device's name, for the JSON lines."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version}


def baseline(Z, k_min, k_max):
    """The reference's structure: every ordered pair, cdist, full sort."""
    n, L, C = Z.shape
    out = torch.empty(n, L, device=Z.device)
    for i in range(n):
        others = torch.cat([Z[:i], Z[i + 1 :]]).reshape(-1, C)
        minima = torch.cdist(Z[i], others).reshape(L, n - 1, L).amin(dim=2)
        out[i] = minima.sort(dim=1).values[:, k_min:k_max].mean(dim=1)
    return out


def baseline_sets(features, topmin_max, device):
    """The reference's structure over every feature set: patch scores (N, h, w)."""
    n, n_sets, h, w, C = features.shape
    k_min, k_max = kernels.interval_bounds(n, 0.0, topmin_max)
    total = torch.zeros(n, h * w, device=device)
    for s in range(n_sets):
        Z = torch.as_tensor(features[:, s]).reshape(n, h * w, C).to(device, torch.float32)
        total += baseline(torch.nn.functional.normalize(Z, dim=-1), k_min, k_max)
    return (total / n_sets).reshape(n, h, w).cpu().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images")
    parser.add_argument("--patches", type=int, default=196, help="patches per image (a square grid)")
    parser.add_argument("--dim", type=int, default=768, help="feature width")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matmul-precision", default="float32", choices=kernels.PRECISIONS,
                        help="MutualScoringDetector(matmul_precision=...)")
    parser.add_argument("--algorithm", default="matmul", choices=kernels.ALGORITHMS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true", help="only time this library")
    parser.add_argument("--radius", type=int, nargs="+", default=[],
                        help="also time same-position matching with these radii (ratio to global)")
    parser.add_argument("--repeat-ratio", type=float, default=None,
                        help="also time the repeated-defect filter (ratio to plain scoring), on these features "
                             "and on a copy where 20%% of the images share one planted patch")
    parser.add_argument("--gemm", type=int, default=None, metavar="SIZE",
                        help="also measure a SIZE x SIZE x SIZE product in the run's precision")
    parser.add_argument("--json", default=None, help="append the results to this file as JSON lines")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    side = int(math.isqrt(args.patches))
    if side * side != args.patches:
        parser.error("--patches must be a square number")
    n, L, C = args.n, args.patches, args.dim
    gen = torch.Generator().manual_seed(0)
    # features of a 'product': a shared pattern per position plus per-image noise
    base = torch.randn(1, L, C, generator=gen)
    Z = torch.nn.functional.normalize(base + 0.7 * torch.randn(n, L, C, generator=gen), dim=-1)
    features = Z.reshape(n, 1, side, side, C).numpy()
    det = MutualScoringDetector(device=str(device), matmul_precision=args.matmul_precision, algorithm=args.algorithm)
    k_min, k_max = kernels.interval_bounds(n, det.topmin_min, det.topmin_max)  # the detector's interval

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"size: N={n}, L={L}, C={C}, one feature set, matmul precision {args.matmul_precision}, "
          f"algorithm {args.algorithm}")
    plan = kernels.Plan(n, L, C, k_max, device, kernels.default_memory_budget(device))
    block = plan.block
    start = time.perf_counter()
    det.fit(features)  # warm-up (and, for "fused" on CUDA, Triton's autotuning)
    warm = time.perf_counter() - start
    tuned = None
    if args.algorithm == "fused" and device.type == "cuda":
        tuned = str(kernels.tuned_kernel(args.matmul_precision).best_config)
        print(f"fused kernel: autotuner chose {tuned}")
    if device.type == "cuda":  # the peak of one fit, without the warm-up's or the yardsticks' allocations
        torch.cuda.reset_peak_memory_stats(device)
    once, det = best_time(lambda: det.fit(features), device, 1)  # the length of one fit, warm
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    # interleaved, so both see the same machine: the best fit against the
    # best matmul sample of the same length
    fits, rates = [once], []
    duration = min(once, 10.0)
    for _ in range(args.repeat):
        rates.append(matmul_rate(block * L, C, device, 1, duration=duration, precision=args.matmul_precision))
        seconds, det = best_time(lambda: det.fit(features), device, 1)
        fits.append(seconds)
    ours_s, rate = min(fits), max(rates)
    print(f"{args.matmul_precision} matmul rate ({block * L} x {C} x {block * L}, products for {duration:.2f} s): "
          f"{rate:.1f} GFLOP/s")
    gflop = n * (n - 1) / 2 * L * L * C * 2 / 1e9
    print(f"sklearn-musc: {ours_s:.3f} s (first fit {warm:.2f} s), {gflop / ours_s:.1f} GFLOP/s = "
          f"{100 * gflop / ours_s / rate:.0f}% of the matmul rate ({gflop:.1f} GFLOP needed)")
    # the table alone on features already on the device: fit's work less the copies in and out
    Zd = Z.to(device)
    table_s = min(best_time(lambda: kernels.max_similarity_table(Zd, plan, args.matmul_precision, args.algorithm),
                            device, 1)[0] for _ in range(args.repeat))
    print(f"similarity table alone (features on the device): {table_s:.3f} s, {gflop / table_s:.1f} GFLOP/s = "
          f"{100 * gflop / table_s / rate:.0f}% of the matmul rate")
    record = {
        "kind": "msm", "n": n, "L": L, "C": C, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        **versions(), "matmul_precision": args.matmul_precision, "algorithm": args.algorithm, "block": block,
        "tuned_config": tuned, "first_fit_s": warm, "fit_s": ours_s, "gflop": gflop, "gflops": gflop / ours_s,
        "table_s": table_s, "table_gflops": gflop / table_s, "table_share_of_matmul": gflop / table_s / rate,
        "matmul_shape": [block * L, C, block * L], "matmul_gflops": rate, "share_of_matmul": gflop / ours_s / rate,
        "peak_gpu_gib": peak,
    }
    if args.gemm:
        dense = matmul_rate(args.gemm, args.gemm, device, 3, duration=min(max(duration, 0.2), 2.0),
                            precision=args.matmul_precision)
        record["gemm_size"], record["gemm_gflops"] = args.gemm, dense
        print(f"{args.matmul_precision} dense product {args.gemm}^3: {dense:.1f} GFLOP/s "
              f"(sklearn-musc at {100 * gflop / ours_s / dense:.0f}% of it)")
    append_json(args.json, record)
    for radius in args.radius:
        local = MutualScoringDetector(device=str(device), radius=radius)
        local.fit(features)  # warm-up
        local_s = min(best_time(lambda: local.fit(features), device, 1)[0] for _ in range(args.repeat))
        print(f"radius {radius}: {local_s:.3f} s = {local_s / ours_s:.3f} of global matching "
              f"(arithmetic share of the products (2r+1)^2/L = {(2 * radius + 1) ** 2 / L:.4f})")
    if args.repeat_ratio is not None:
        planted = features.copy()
        share = max(2, n // 5)
        planted[:share, 0, 0, 0] = torch.nn.functional.normalize(torch.randn(C, generator=gen), dim=0).numpy()
        for name, feats in (("these features", features), (f"{share} images sharing a patch", planted)):
            plain = MutualScoringDetector(device=str(device)).fit(feats)
            plain_s = min(best_time(lambda: plain.fit(feats), device, 1)[0] for _ in range(args.repeat))
            filt = MutualScoringDetector(device=str(device), repeat_ratio=args.repeat_ratio).fit(feats)
            filt_s = min(best_time(lambda: filt.fit(feats), device, 1)[0] for _ in range(args.repeat))
            changed = int((np.abs(filt.anomaly_scores_ - plain.anomaly_scores_) > 1e-6).sum())
            print(f"repeat_ratio {args.repeat_ratio}, {name}: {filt_s:.3f} s = {filt_s / plain_s:.3f} of plain "
                  f"scoring ({plain_s:.3f} s); {changed} image scores changed")
    if args.skip_baseline:
        return
    base_s, ref = best_time(lambda: baseline(Zd, k_min, k_max), device, max(1, args.repeat - 1))
    diff = float(np.abs(ref.reshape(n, side, side).cpu().numpy() - det.patch_scores_).max())
    print(f"reference structure (cdist per image): {base_s:.3f} s")
    print(f"speed-up: {base_s / ours_s:.2f}x; max abs diff of the scores: {diff:.2e}")
    append_json(args.json, {"kind": "msm-baseline", "n": n, "L": L, "C": C, "matmul_precision": args.matmul_precision,
                            "algorithm": args.algorithm, "baseline_s": base_s, "speedup": base_s / ours_s,
                            "max_abs_diff": diff})
    if args.matmul_precision == "float32" and diff > 1e-5:
        raise SystemExit(f"scores differ by {diff:.2e} > 1e-5")


if __name__ == "__main__":
    main()
