"""Study: same-position matching (``MutualScoringDetector(radius=R)``) vs global matching.

Zero-shot MuSc on the whole test folder of each of the 15 MVTec AD categories,
radius in {None (global), 0, 1, 2, 3}: image AUROC, pixel AUROC, PRO. The global
results are those of ``studies/fewshot.py`` (zero-shot on the whole folder, from its
cached best-match table, checked equal to ``MutualScoringDetector().fit``); the radius
runs call ``MutualScoringDetector(radius=R, device="cpu").fit`` directly.

Alignment of each category is judged from its good test images: a montage of four
good images and the mean of all of them (``--montage``), and a number, the mean
leave-one-out correlation of each good image (grayscale, 96 px) with the mean of the
other good images: parts always at the same place and orientation give a sharp mean
and a high correlation; rotating parts and textures a blurred mean and a low one.

``--timing CATEGORY`` times the MSM fit (LNAMD excluded) for every radius vs global on
one category (default hazelnut, 110 images): best of ``--repeats`` runs for the radii,
one run for global.

    python studies/same_position.py              # all categories (resumes)
    python studies/same_position.py --timing hazelnut
    python studies/same_position.py --table
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fewshot  # noqa: E402
from _cache import categories, load  # noqa: E402
from fewshot import OUT, log  # noqa: E402

from sklearn_musc import LNAMDTransformer, MutualScoringDetector  # noqa: E402
from sklearn_musc.metrics import evaluate  # noqa: E402

RADII = (0, 1, 2, 3)
L = 256
GRID = (16, 16)

# Decided from the montage and the alignment score (see benchmarks/RESULTS.md).
ALIGNED = ("bottle", "cable", "capsule", "pill", "toothbrush", "transistor", "zipper")
NOT_ALIGNED = ("hazelnut", "metal_nut", "screw")
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")


def group_of(c):
    return "aligned" if c in ALIGNED else "not aligned" if c in NOT_ALIGNED else "texture"


def alignment_score(category, size=96, sigma=4.0):
    """Mean leave-one-out correlation of the good images' high-pass structure (grayscale).

    Each good image minus its Gaussian blur (sigma 4 px at 96 px: lighting and
    background removed), correlated with the mean of the other good images' high
    pass: near 1 when edges sit at the same place in every image, near 0 when they
    move (rotating parts, textures).
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    e = load(category)
    good = [p for p, lab in zip(e["paths"], e["labels"]) if lab == 0]
    ims = np.stack([np.asarray(Image.open(p).convert("L").resize((size, size)), np.float64) for p in good])
    ims = ims - np.stack([gaussian_filter(im, sigma) for im in ims])
    total = ims.sum(0)
    corr = []
    for im in ims:
        rest = (total - im) / (len(ims) - 1)
        corr.append(np.corrcoef(im.ravel(), rest.ravel())[0, 1])
    return float(np.mean(corr))


def alignment_scores():
    path = OUT / "alignment.json"
    scores = json.loads(path.read_text()) if path.exists() else {}
    for c in categories():
        if c not in scores:
            scores[c] = alignment_score(c)
    path.write_text(json.dumps(scores, indent=1))
    return scores


def montage(path, size=96):
    from PIL import Image
    rows = []
    for c in categories():
        e = load(c)
        good = [p for p, lab in zip(e["paths"], e["labels"]) if lab == 0]
        ims = [np.asarray(Image.open(p).convert("L").resize((size, size)), np.float32) for p in good]
        rows.append(np.concatenate(ims[:4] + [np.mean(ims, 0)], 1))
    Image.fromarray(np.concatenate(rows, 0).astype(np.uint8)).save(path)


def theory_ratio(r, grid=GRID):
    """(2r+1)^2 / L, and the exact share of position pairs compared (borders clipped)."""
    h, w = grid
    pairs = sum((h - abs(dy)) * (w - abs(dx)) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                if abs(dy) < h and abs(dx) < w)
    return (2 * r + 1) ** 2 / (h * w), pairs / (h * w) ** 2


def metrics(labels, masks, maps, scores):
    r = evaluate(labels, scores, masks, maps, pro=True)
    return dict(image_auroc=r["image_auroc"], pixel_auroc=r["pixel_auroc"], pro=r["pro"])


def features(category):
    """LNAMD feature sets of the whole folder, cached (float32, memory-mapped on reload)."""
    path = OUT / f"feats_{category}.joblib"
    if path.exists():
        return joblib.load(path, mmap_mode="r")
    feats = LNAMDTransformer(device="cpu").fit_transform(load(category)["tokens"])
    tmp = path.with_suffix(".tmp")
    joblib.dump(feats, tmp)
    tmp.replace(path)
    return feats


def run_category(category, radii=RADII):
    path = OUT / f"same_position_{category}.json"
    res = json.loads(path.read_text()) if path.exists() else dict(category=category)
    todo = [r for r in radii if f"r{r}" not in res]
    if todo:
        e = load(category)
        labels, masks = np.asarray(e["labels"]), e["masks"]
        feats = features(category)
        for r in todo:
            t0 = time.time()
            det = MutualScoringDetector(radius=r, device="cpu").fit(feats)
            fit_s = time.time() - t0
            res[f"r{r}"] = dict(metrics(labels, masks, det.anomaly_maps_, det.anomaly_scores_), fit_s=fit_s)
            log(f"  {category} radius {r}: fit {fit_s:.1f} s, image AUROC {res[f'r{r}']['image_auroc']:.3f}")
            path.write_text(json.dumps(res, indent=1))
    path.write_text(json.dumps(res, indent=1))
    return res


def _timed_fit(feats, r):
    t0, c0 = time.perf_counter(), time.process_time()
    MutualScoringDetector(radius=r, device="cpu").fit(feats)
    return time.perf_counter() - t0, time.process_time() - c0


def timing(category, repeats):
    """Wall and CPU (process) seconds of the MSM fit; the machine is shared, so CPU time is the steadier."""
    path = OUT / f"same_position_timing_{category}.json"
    feats = features(category)
    feats.features = np.ascontiguousarray(feats.features)  # in RAM, not memory-mapped
    out = dict(category=category, n_images=feats.n_images, torch_threads=torch.get_num_threads(),
               load_before=os.getloadavg()[0])
    for r in RADII:
        runs = [_timed_fit(feats, r) for _ in range(repeats)]
        out[f"r{r}"] = min(w for w, _ in runs)
        out[f"r{r}_cpu"] = min(c for _, c in runs)
        log(f"  timing {category} radius {r}: wall/cpu {runs}")
    out["global"], out["global_cpu"] = _timed_fit(feats, None)
    out["load_after"] = os.getloadavg()[0]
    log(f"  timing {category} global: wall {out['global']:.1f} s, cpu {out['global_cpu']:.1f} s")
    path.write_text(json.dumps(out, indent=1))
    return out


def markdown():
    res = {c: json.loads((OUT / f"same_position_{c}.json").read_text())
           for c in categories() if (OUT / f"same_position_{c}.json").exists()}
    for c in res:
        f = OUT / f"fewshot_{c}_seed0.json"
        if f.exists():
            res[c]["global"] = json.loads(f.read_text())["zero_shot_full"]
    align = alignment_scores()
    cols = ["global"] + [f"r{r}" for r in RADII]
    names = ["global"] + [f"r={r}" for r in RADII]
    order = sorted(res, key=lambda c: (["aligned", "not aligned", "texture"].index(group_of(c)), c))
    lines = []
    for metric, title in (("image_auroc", "Image AUROC (%)"), ("pixel_auroc", "Pixel AUROC (%)"),
                          ("pro", "PRO (%, FPR <= 0.3)")):
        lines += [f"\n{title}, zero-shot on the whole test folder\n",
                  "| category | group | alignment | " + " | ".join(names) + " |",
                  "|" + "---|" * (3 + len(cols))]
        val = {c: [100 * res[c].get(k, {}).get(metric, np.nan) for k in cols] for c in order}
        for c in order:
            lines.append(f"| {c} | {group_of(c)} | {align[c]:.2f} | "
                         + " | ".join("-" if np.isnan(v) else f"{v:.1f}" for v in val[c]) + " |")
        for g in ("aligned", "not aligned", "texture", None):
            cs = [c for c in order if g is None or group_of(c) == g]
            if cs:  # a column missing for some categories: mean of those that have it, (how many)
                a = np.array([val[c] for c in cs])
                have = (~np.isnan(a)).sum(axis=0)
                cells = [f"**{np.nanmean(a[:, j]):.1f}**" + ("" if have[j] == len(cs) else f" ({have[j]})")
                         if have[j] else "-" for j in range(a.shape[1])]
                lines.append(f"| **mean {g or 'all'} ({len(cs)})** | | | " + " | ".join(cells) + " |")
        for g in ("aligned", "not aligned", "texture", None):  # same categories in every column
            cs = [c for c in order if g is None or group_of(c) == g]
            sub = [c for c in cs if not np.isnan(val[c]).any()]
            if len(sub) < len(cs) and sub:
                m = np.mean([val[c] for c in sub], axis=0)
                lines.append(f"| mean {g or 'all'}, the {len(sub)} with every radius ({', '.join(sub)}) | | | "
                             + " | ".join(f"{v:.1f}" for v in m) + " |")
    tfiles = sorted(OUT.glob("same_position_timing_*.json"))
    for f in tfiles:
        t = json.loads(f.read_text())
        lines.append(f"\nMSM fit time, {t['category']} ({t['n_images']} images, {t['torch_threads']} torch threads, "
                     f"load average {t['load_before']:.1f} before / {t['load_after']:.1f} after; "
                     f"best of the repeats for the radii, one run for global):\n")
        lines.append("| radius | wall (s) | CPU (s) | wall ratio | CPU ratio | (2r+1)^2/L "
                     "| exact share of position pairs "
                     "| arithmetic ratio (x2: global multiplies each image pair once, local both ways) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        lines.append(f"| global | {t['global']:.1f} | {t['global_cpu']:.1f} | 1 | 1 | 1 | 1 | 1 |")
        for r in RADII:
            th, exact = theory_ratio(r)
            lines.append(f"| {r} | {t[f'r{r}']:.2f} | {t[f'r{r}_cpu']:.2f} | {t[f'r{r}'] / t['global']:.4f} | "
                         f"{t[f'r{r}_cpu'] / t['global_cpu']:.4f} | {th:.4f} | {exact:.4f} | {2 * exact:.4f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--categories", nargs="+", default=None)
    ap.add_argument("--timing", metavar="CATEGORY")
    ap.add_argument("--radii", type=int, nargs="+", default=None, help="only these radii")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--montage", metavar="PNG")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.montage:
        montage(args.montage)
        return
    if args.timing:
        timing(args.timing, args.repeats)
    elif not args.table:
        # radius-major: the cheap radii of every category first; global results come
        # from studies/fewshot.py (run it first, or they are computed here)
        for radii in ((0, 1), (2,), (3,)) if args.radii is None else [tuple(args.radii)]:
            for c in args.categories or categories():
                log(f"{c} ({group_of(c)}) radius {radii}")
                run_category(c, radii)
        if args.radii is None:
            for c in args.categories or categories():  # global: zero-shot on the whole folder
                fewshot.run_category(c, 0)
    print(markdown())


if __name__ == "__main__":
    main()
