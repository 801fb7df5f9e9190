"""Study: few-shot MuSc and MuSc+ vs zero-shot MuSc on MVTec AD (all 15 categories).

For each category and each number of references k in (1, 2, 4, 8), k good test
images are drawn with ``np.random.default_rng(seed)`` (nested: the first k of one
permutation of the good images) and removed from the scored batch B. On B:

- zero-shot MuSc: B scores itself (``MutualScoringDetector().fit(B)``);
- few-shot MuSc (paper A.6): ``MutualScoringDetector().fit(B, references=R)``;
- MuSc+: ``MutualScoringDetector(novelty=True, reduction="min").fit(R).transform(B)``
  (for k = 1 computed the same way, from the best match in the single reference);
- RsCIN (k_list=(1, 2, 3), class-token embeddings) after zero-shot and few-shot MuSc.

All of these are interval averages of one table per category: for every image i,
feature set s, patch p and scorer image j, the best dot product of patch p of i
among the patches of j. The script computes that table once per category with the
library's own kernel (``kernels.max_similarity_table``, what ``fit`` uses) and caches it
under ``$MUSC_STUDIES`` (default ``/tmp/musc-studies``); every setting above is then a
choice of scorer columns and of (k_min, k_max) (``kernels.interval_average``). That costs
one zero-shot fit per category instead of ~13. ``--check CATEGORY`` verifies, with the
public estimators, that the derived scores and maps equal those of the API.

    python studies/fewshot.py                 # all categories, seed 0 (resumes)
    python studies/fewshot.py --seeds 0 1 2   # more draws of the references
    python studies/fewshot.py --check toothbrush
    python studies/fewshot.py --table         # print the tables from the cached results
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cache import TUNE, categories, load  # noqa: E402

from sklearn_musc import LNAMDTransformer, MutualScoringDetector, RsCINRescorer  # noqa: E402
from sklearn_musc import kernels  # noqa: E402
from sklearn_musc import ImageScores  # noqa: E402
from sklearn_musc.metrics import evaluate, image_auroc  # noqa: E402

OUT = Path(os.environ.get("MUSC_STUDIES", "/tmp/musc-studies"))
SHOTS = (1, 2, 4, 8)
TOPMIN = (0.0, 0.3)
K_LIST = (1, 2, 3)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------- the table

def features(category):
    e = load(category)
    return e, LNAMDTransformer(device="cpu").fit_transform(e["tokens"])


def table(category):
    """(N, n_sets, L, N) float32 best dot products (``-inf`` on i == j), cached; and the embeddings."""
    path, emb_path = OUT / f"table_{category}.npy", OUT / f"embeddings_{category}.npy"
    if path.exists() and emb_path.exists():
        return np.load(path, mmap_mode="r"), np.load(emb_path)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _, feats = features(category)
    X = feats.features
    n, n_sets, h, w, dim = X.shape
    L = h * w
    device = torch.device("cpu")
    plan = kernels.Plan(n, L, dim, n - 1, device, kernels.default_memory_budget(device))
    out = np.empty((n, n_sets, L, n), dtype=np.float32)
    with torch.inference_mode():
        for s in range(n_sets):
            Z = F.normalize(torch.as_tensor(X[:, s]).reshape(n, L, dim).float(), dim=-1)
            out[:, s] = kernels.max_similarity_table(Z, plan).numpy()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    np.save(emb_path, np.asarray(feats.embeddings, dtype=np.float32))
    log(f"  table {category}: {n} images, {time.time() - t0:.0f} s")
    return np.load(path, mmap_mode="r"), np.load(emb_path)


def patch_scores(T, rows, cols, k_bounds, grid=(16, 16)):
    """Patch scores (len(rows), h, w) of images ``rows`` scored by images ``cols``.

    ``cols`` may hold a row's own image: its entry is -inf and never ranks in the
    top k_max (k_max <= number of other scorers).
    """
    k_min, k_max = k_bounds
    rows, cols = np.asarray(rows), np.asarray(cols)
    with torch.inference_mode():
        sub = torch.as_tensor(np.ascontiguousarray(T[rows][..., cols]))  # (n, S, L, c)
        n, S, L, c = sub.shape
        avg = kernels.interval_average(sub.reshape(n * S, L, c), k_min, k_max)  # (n*S, L)
        return avg.reshape(n, S, L).mean(dim=1).reshape((n,) + grid).numpy()


def upsample(ps, size=(224, 224)):
    with torch.inference_mode():
        g = torch.as_tensor(ps)[:, None]
        return F.interpolate(g, size=size, mode="bilinear", align_corners=True)[:, 0].numpy()


def metrics(labels, masks, ps, emb=None):
    maps = upsample(ps)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    r = evaluate(labels, scores, masks, maps, pro=True)
    out = dict(image_auroc=r["image_auroc"], pixel_auroc=r["pixel_auroc"], pro=r["pro"])
    if emb is not None:
        rs = RsCINRescorer(k_list=K_LIST).fit(ImageScores(scores=scores, embeddings=emb))
        out["rscin_image_auroc"] = image_auroc(labels, rs.anomaly_scores_)
    return out


def bounds(n_images, topmin=TOPMIN):
    return kernels.interval_bounds(n_images, *topmin)


def draw_refs(labels, seed):
    good = np.flatnonzero(np.asarray(labels) == 0)
    return np.random.default_rng(seed).permutation(good)[: max(SHOTS)]


def run_category(category, seed):
    path = OUT / f"fewshot_{category}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    e = load(category)
    labels, masks = np.asarray(e["labels"]), e["masks"]
    T, emb = table(category)
    N = len(labels)
    t0 = time.time()
    res = dict(category=category, seed=seed, n_images=N)
    allidx = np.arange(N)
    res["zero_shot_full"] = metrics(labels, masks, patch_scores(T, allidx, allidx, bounds(N)), emb)
    perm = draw_refs(labels, seed)
    for k in SHOTS:
        R = np.sort(perm[:k])
        B = np.setdiff1d(allidx, R)
        lb, mb, eb = labels[B], masks[B], emb[B]
        res[f"k{k}"] = dict(
            refs=[int(i) for i in R],
            zero_shot=metrics(lb, mb, patch_scores(T, B, B, bounds(len(B))), eb),
            musc=metrics(lb, mb, patch_scores(T, B, allidx, bounds(len(B) + k)), eb),
            musc_plus=metrics(lb, mb, patch_scores(T, B, R, (0, 1))),
        )
    path.write_text(json.dumps(res, indent=1))
    log(f"  metrics {category} seed {seed}: {time.time() - t0:.0f} s")
    return res


# ----------------------------------------------------------------- check against the API

def check(category, seed=0):
    """Derived scores vs the public estimators (max abs differences of maps and scores)."""
    e, feats = features(category)
    labels = np.asarray(e["labels"])
    T, emb = table(category)
    N = len(labels)
    perm = draw_refs(labels, seed)
    for k in SHOTS:
        R = np.sort(perm[:k])
        B = np.setdiff1d(np.arange(N), R)
        fb, fr = feats.take(B), feats.take(R)
        got = dict(
            zero_shot=MutualScoringDetector(device="cpu").fit_transform(fb),
            musc=MutualScoringDetector(device="cpu").fit_transform(fb, references=fr),
        )
        if k >= 2:
            got["musc_plus"] = MutualScoringDetector(novelty=True, reduction="min", device="cpu").fit(fr).transform(fb)
        derived = dict(zero_shot=patch_scores(T, B, B, bounds(len(B))),
                       musc=patch_scores(T, B, np.arange(N), bounds(N)),
                       musc_plus=patch_scores(T, B, R, (0, 1)))
        for name, out in got.items():
            maps = upsample(derived[name])
            d_map = float(np.abs(maps - out.anomaly_maps).max())
            d_score = float(np.abs(maps.reshape(len(B), -1).max(1) - out.scores).max())
            line = f"{category} k={k} {name}: max |map diff| {d_map:.2e}, max |score diff| {d_score:.2e}"
            if name != "musc_plus":
                rs_api = RsCINRescorer(k_list=K_LIST).fit(out).anomaly_scores_
                rs_der = RsCINRescorer(k_list=K_LIST).fit(
                    ImageScores(scores=maps.reshape(len(B), -1).max(1), embeddings=emb[B])).anomaly_scores_
                line += f", max |RsCIN diff| {float(np.abs(rs_api - rs_der).max()):.2e}"
            log(line)


# ----------------------------------------------------------------- tables

COLS = [("zero_shot", k) for k in SHOTS] + [("musc", k) for k in SHOTS] + [("musc_plus", k) for k in SHOTS]


def _value(r, method, k, metric):
    v = r[f"k{k}"][method].get(metric)
    return np.nan if v is None else 100 * v


def collect(seeds):
    res = {}
    for c in categories():
        rows = [json.loads((OUT / f"fewshot_{c}_seed{s}.json").read_text())
                for s in seeds if (OUT / f"fewshot_{c}_seed{s}.json").exists()]
        if rows:
            res[c] = rows
    return res


def _mean_over_seeds(rows, method, k, metric):
    return float(np.mean([_value(r, method, k, metric) for r in rows]))


def markdown(seeds):
    res = collect(seeds)
    cats = list(res)
    tune = [c for c in cats if c in TUNE]
    other = [c for c in cats if c not in TUNE]
    groups = [(f"mean (all {len(cats)})", cats), (f"mean TUNE ({len(tune)})", tune),
              (f"mean other ({len(other)})", other)]
    lines = []

    def table_for(metric, cols, title):
        head = ["category"] + [title_of(m, k) for m, k in cols]
        lines.append(f"\n{title}\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        vals = {c: [_mean_over_seeds(res[c], m, k, metric) for m, k in cols] for c in cats}
        for c in cats:
            lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals[c]) + " |")
        for name, cs in groups:
            if cs:
                m = np.mean([vals[c] for c in cs], axis=0)
                lines.append(f"| **{name}** | " + " | ".join(f"**{v:.1f}**" for v in m) + " |")

    def title_of(m, k):
        return {"zero_shot": "zero-shot", "musc": "MuSc", "musc_plus": "MuSc+"}[m] + ("" if k is None else f" {k}")

    table_for("image_auroc", COLS, "Image AUROC (%) of the MSM image scores")
    table_for("rscin_image_auroc", [("zero_shot", k) for k in SHOTS] + [("musc", k) for k in SHOTS],
              "Image AUROC (%) after RsCIN, zero-shot vs few-shot MuSc on the same batch "
              "(column k: batch without k references)")
    table_for("pixel_auroc", COLS, "Pixel AUROC (%)")
    table_for("pro", COLS, "PRO (%, FPR <= 0.3)")
    # zero-shot on each batch B_k, and on the whole folder
    lines.append("\nZero-shot on the batch without the k references (means, %): image AUROC / pixel AUROC / PRO\n")
    lines.append("| group | full folder | " + " | ".join(f"B without {k}" for k in SHOTS) + " |")
    lines.append("|" + "---|" * (2 + len(SHOTS)))
    for name, cs in groups:
        cells = []
        for k in [None] + list(SHOTS):
            trip = []
            for metric in ("image_auroc", "pixel_auroc", "pro"):
                if k is None:
                    trip.append(np.mean([np.mean([100 * r["zero_shot_full"][metric] for r in res[c]]) for c in cs]))
                else:
                    trip.append(np.mean([_mean_over_seeds(res[c], "zero_shot", k, metric) for c in cs]))
            cells.append("/".join(f"{v:.1f}" for v in trip))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--categories", nargs="+", default=None)
    ap.add_argument("--check", metavar="CATEGORY")
    ap.add_argument("--table", action="store_true", help="only print the tables of the cached results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.check:
        check(args.check)
        return
    if not args.table:
        for c in args.categories or categories():
            for s in args.seeds:
                log(f"{c} seed {s}")
                run_category(c, s)
    print(markdown(args.seeds))


if __name__ == "__main__":
    main()
