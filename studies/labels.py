"""Study for issue #11: label-free image labels and pixel masks on three kinds of batch.

For every shared MVTec AD category (DINOv2 ViT-S/14 at 224, the estimators'
defaults after the backbone) three batches are built from the test folder:

- ``heavy``: the whole test folder (60-75 % defective);
- ``prod``: all good images + round(0.1 * n_good) defective ones, drawn with a
  fixed seed (production-like);
- ``clean``: the good images only.

MSM runs once per batch (the expensive part); its patch scores, image scores
and RsCIN inputs are kept in ``$MUSC_LABELS_CACHE`` (default
``/tmp/musc-labels-cache/<aggregation>-t<topmin_max>``, one folder per
default setting),
so candidate rules are cheap to try::

    python studies/labels.py compute            # MSM of the 45 batches (cached)
    python studies/labels.py rules              # image-label rules, both halves
    python studies/labels.py pixels             # pixel-threshold rules
    python studies/labels.py table              # markdown table for RESULTS.md
    python studies/labels.py bound              # what any threshold could reach (uses labels)
    python studies/labels.py separable          # can a heavy batch's scores be told from its clean batch's?
    python studies/labels.py carry              # the clean batch's threshold given to the other two
    python studies/labels.py resolution 448 screw zipper capsule
                                                # the production bound's worst categories at another size

Rules are chosen on ``_cache.TUNE`` and confirmed on the other 7 categories.
No labels are used by any rule; they only score the outcome.
"""

import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _cache import TUNE, categories, load  # noqa: E402

from sklearn_musc import LNAMDTransformer, MutualScoringDetector, RsCINRescorer  # noqa: E402
from sklearn_musc.metrics import image_f1_max, pixel_f1_max  # noqa: E402

# one folder per default setting: the study follows the estimators' defaults;
# LABELS_LAYERS=2,5,8 scores with a subset of the cached blocks (2, 5, 8, 11) instead
LAYERS = tuple(int(b) for b in os.environ["LABELS_LAYERS"].split(",")) if os.environ.get("LABELS_LAYERS") else None
_DEFAULTS = f"{LNAMDTransformer().aggregation}-t{MutualScoringDetector().topmin_max}" + (
    "-l" + "".join(map(str, LAYERS)) if LAYERS else "")
OUT = Path(os.environ.get("MUSC_LABELS_CACHE", f"/tmp/musc-labels-cache/{_DEFAULTS}"))
PYTHRESH_LIB = os.environ.get("PYTHRESH_LIB", "/tmp/pythresh-lib")
KINDS = ("heavy", "prod", "clean")
SEED = 0


def batch_indices(labels, kind, seed=SEED):
    good = np.flatnonzero(labels == 0)
    bad = np.flatnonzero(labels == 1)
    if kind == "heavy":
        return np.arange(len(labels))
    if kind == "clean":
        return good
    n_bad = int(round(0.1 * len(good)))
    pick = np.random.default_rng(seed).choice(bad, size=n_bad, replace=False)
    return np.sort(np.concatenate([good, pick]))


def compute(category):
    """MSM + RsCIN inputs of the three batches of ``category`` (cached)."""
    path = OUT / f"{category}.joblib"
    if path.exists():
        return joblib.load(path)
    from _cache import CACHE
    for _ in range(180):  # the cache is filled by another process: wait rather than compute twice
        if (CACHE / f"{category}.joblib").exists():
            break
        time.sleep(5)
    entry = load(category)
    tokens, labels, masks = entry["tokens"], entry["labels"], entry["masks"]
    if LAYERS:  # a subset of the cached blocks
        import dataclasses
        keep = [tokens.layers.index(b) for b in LAYERS]
        tokens = dataclasses.replace(tokens, tokens=tokens.tokens[:, keep], layers=LAYERS)
    feats = LNAMDTransformer(device="cpu").fit_transform(tokens)
    result = {}
    for kind in KINDS:
        idx = batch_indices(labels, kind)
        t0 = time.perf_counter()
        det = MutualScoringDetector(device="cpu")
        out = det.fit_transform(feats.take(idx))
        result[kind] = dict(
            idx=idx,
            labels=labels[idx],
            patch=det.patch_scores_.astype(np.float32),
            image=det.anomaly_scores_.astype(np.float64),
            embeddings=out.embeddings,
            salient=out.salient_features,
            seconds=time.perf_counter() - t0,
        )
        print(f"{category:12s} {kind:5s} n={len(idx):3d} {result[kind]['seconds']:.1f}s", flush=True)
    result["masks"] = masks
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(result, tmp)
    tmp.replace(path)
    return result


# ---------------------------------------------------------------------------
# candidate rules: each maps a batch record to a threshold on the detector's
# image-score scale (an image is flagged when its score is above it)
# ---------------------------------------------------------------------------

def rscin_raw(b):
    """RsCIN with its defaults (the embedding "auto" picks: the salient feature) on the raw scores."""
    return RsCINRescorer().fit(b["salient"], scores=b["image"]).anomaly_scores_


def f1(y, flagged):
    tp = np.sum(flagged & (y == 1))
    if tp == 0:
        return 0.0
    return 2 * tp / (np.sum(flagged) + np.sum(y == 1))


def cached(cats):
    """The categories of ``cats`` whose batches are in the cache."""
    return [c for c in cats if (OUT / f"{c}.joblib").exists()]


def load_all(cats):
    return {c: compute(c) for c in cats}


def pythresh_rule(name):
    def rule(s, b):
        if PYTHRESH_LIB not in sys.path:  # pip install --target "$PYTHRESH_LIB" pythresh (not a dependency)
            sys.path.append(PYTHRESH_LIB)
        import importlib
        mod = importlib.import_module(f"pythresh.thresholds.{name.lower()}")
        th = getattr(mod, name)()
        z = (s - s.min()) / max(np.ptp(s), 1e-12)
        lab = th.eval(z)
        if lab.sum() == 0:
            return np.inf
        return float(s[lab == 0].max()) if (lab == 0).any() else -np.inf
    return rule


def pythresh_rules():
    """pythresh's thresholders that import here (some need optional packages); the others are reported."""
    import importlib
    import warnings
    warnings.filterwarnings("ignore", module="pythresh")
    if PYTHRESH_LIB not in sys.path:
        sys.path.append(PYTHRESH_LIB)
    rules = {}
    for name in PYTHRESH:
        try:
            importlib.import_module(f"pythresh.thresholds.{name.lower()}")
        except ImportError as exc:
            print(f"pythresh {name}: not evaluated ({exc})")
            continue
        rules[f"pythresh {name}"] = pythresh_rule(name)
    return rules


def mad_rule(c):
    def rule(s, b=None):
        med = np.median(s)
        return med + c * 1.4826 * np.median(np.abs(s - med))
    return rule


def patch_mad_rule(c):
    """The issue's idea: all patch scores of the batch as the null of a normal image's maximum."""
    def rule(s, b):
        p = b["patch"].ravel().astype(np.float64)
        med = np.median(p)
        return med + c * 1.4826 * np.median(np.abs(p - med))
    return rule


def half_sample_mode(x):
    x = np.sort(x)
    while len(x) > 3:
        h = (len(x) + 1) // 2
        widths = x[h - 1:] - x[: len(x) - h + 1]
        i = int(np.argmin(widths))
        x = x[i : i + h]
    return float(np.mean(x))


def mode_rule(c):
    """Centre at the half-sample mode, scale from the scores below it (uncontaminated side)."""
    def rule(s, b=None):
        m = half_sample_mode(s)
        low = m - s[s <= m]
        return m + c * 1.4826 * np.median(low) if len(low) else m
    return rule


def shorth_rule(c, share=0.2):
    """Centre and scale of the tightest ``share`` of the scores (the normal cluster, even a minority)."""
    from scipy.stats import norm
    half = norm.ppf(0.5 + share / 2)

    def rule(s, b=None):
        x = np.sort(s)
        h = max(2, int(np.ceil(share * len(x))))
        widths = x[h - 1:] - x[: len(x) - h + 1]
        i = int(np.argmin(widths))
        centre = 0.5 * (x[i] + x[i + h - 1])
        return centre + c * widths[i] / (2 * half)
    return rule


def gmm_rule(c, log=True, margin=0.0, d_min=0.0):
    from sklearn.mixture import GaussianMixture

    def rule(s, b=None):
        x = (np.log(s) if log else s).reshape(-1, 1)
        g1 = GaussianMixture(1).fit(x)
        g2 = GaussianMixture(2, n_init=3, random_state=0).fit(x)
        mu, var = g2.means_.ravel(), g2.covariances_.ravel()
        d = np.sqrt(2) * abs(mu[0] - mu[1]) / np.sqrt(var.sum())
        if g2.bic(x) + margin < g1.bic(x) and d > d_min:
            grid = np.linspace(x.min(), x.max(), 2000).reshape(-1, 1)
            post = g2.predict_proba(grid)[:, int(np.argmax(g2.means_.ravel()))]
            cut = grid[np.argmax(post > 0.5), 0]
            return float(np.exp(cut) if log else cut)
        return mad_rule(c)(s)
    return rule


def otsu_rule(c, min_coef=0.555):
    """Otsu split of the sorted scores when Sarle's bimodality coefficient says two modes."""
    from scipy import stats

    def rule(s, b=None):
        n = len(s)
        bc = (stats.skew(s) ** 2 + 1) / (stats.kurtosis(s) + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
        if bc > min_coef:
            x = np.sort(s)
            best, cut = -1, None
            for i in range(1, n):
                w0, w1 = i / n, 1 - i / n
                v = w0 * w1 * (x[:i].mean() - x[i:].mean()) ** 2
                if v > best:
                    best, cut = v, (x[i - 1] + x[i]) / 2
            return cut
        return mad_rule(c)(s)
    return rule


SWEEP = {f"gmm m{m} D{d} +mad{c}": gmm_rule(c, log=lg, margin=m, d_min=d)
         for lg in (True,) for m in (0, 4, 10) for d in (0, 2) for c in (2.5, 3, 3.5, 4)}
SWEEP.update({f"mad{c}": mad_rule(c) for c in (2, 2.5, 3, 3.5, 4, 5)})

def impl_rule(n_sigma=4.5, margin=10.0, guard=True):
    """The package's rule (sklearn_musc.thresholds.auto_threshold) with other constants."""
    from sklearn_musc.thresholds import auto_threshold

    def rule(s, b=None):
        return auto_threshold(s, n_sigma=n_sigma, bic_margin=margin, skew_guard=guard)
    return rule


IMPL = {f"auto guard={g} c={c} margin={m}": impl_rule(c, m, g) for g in (True, False)
        for m in (4, 10) for c in (2.5, 3, 3.5)}

RULES = {
    "mad3 (old)": mad_rule(3),
    "mad5": mad_rule(5),
    "patch-mad6": patch_mad_rule(6),
    "patch-mad10": patch_mad_rule(10),
    "shorth.2-4": shorth_rule(4, 0.2),
    "shorth.2-6": shorth_rule(6, 0.2),
    "shorth.3-4": shorth_rule(4, 0.3),
    "shorth.3-6": shorth_rule(6, 0.3),
    "gmm-log10D2+mad5": gmm_rule(5, margin=10, d_min=2),
    "gmm-log+mad5": gmm_rule(5),
    "gmm+mad5": gmm_rule(5, log=False),
    "otsu+mad5": otsu_rule(5),
}
PYTHRESH = ("FILTER", "KARCH", "ZSCORE", "IQR", "MAD", "GESD", "CHAU", "DSN", "EB", "MTT", "OCSVM",
            "CLF", "CLUST", "AUCP", "BOOT", "FWFM", "MOLL", "WIND", "YJ", "QMCD", "DECOMP", "HIST")


def evaluate_rules(data, rules):
    """rows[rule][cat] = dict(heavy, prod (F1 / F1-max, detector and RsCIN), clean flagged, n)."""
    rows = {}
    for name, rule in rules.items():
        rows[name] = {}
        for c, r in data.items():
            out = {}
            for kind in KINDS:
                b = r[kind]
                y = b["labels"]
                s, sr = b["image"], rscin_raw(b)
                t = rule(s, b)
                tr = rule(sr, b)
                if kind == "clean":
                    out["clean"] = (int(np.sum(s > t)), int(np.sum(sr > t)), int(np.sum(sr > tr)), len(s))
                else:
                    out[kind] = (f1(y, s > t) / image_f1_max(y, s), f1(y, sr > t) / image_f1_max(y, sr),
                                 f1(y, sr > tr) / image_f1_max(y, sr))
            rows[name][c] = out
    return rows


def summarise(rows, cats, label):
    print(f"\n== {label}: {len(cats)} categories; F1/F1-max mean (min) det | rscin carried | rscin own; "
          "clean flagged det | rscin carried | own")
    for name, per in rows.items():
        h = np.array([per[c]["heavy"] for c in cats])
        p = np.array([per[c]["prod"] for c in cats])
        cl = np.array([per[c]["clean"] for c in cats])
        n = cl[:, 3].sum()
        print(f"{name:16s} heavy {h.mean(0).round(3)} prod {p.mean(0).round(3)} min {p.min(0).round(2)} "
              f"clean {cl[:, 0].sum()}/{cl[:, 1].sum()}/{cl[:, 2].sum()} of {n}")


def maps_of(b):
    import torch
    import torch.nn.functional as F
    with torch.inference_mode():
        up = F.interpolate(torch.as_tensor(b["patch"])[:, None], size=(224, 224), mode="bilinear",
                           align_corners=True)
    return up[:, 0].numpy()


def final_rows(data, **rule):
    """Per category and batch kind: the package's default rule (``rule``: its keyword arguments) against the old one."""
    from sklearn_musc import ImageScores
    from sklearn_musc.thresholds import auto_threshold, defect_masks, threshold_scores
    rows = {}
    for c, r in data.items():
        row = {}
        for kind in KINDS:
            b = r[kind]
            y, s = b["labels"], b["image"]
            t, lab = threshold_scores(s, "auto", threshold=auto_threshold(s, **rule))
            maps = maps_of(b)
            batch = ImageScores(scores=s, embeddings=b["embeddings"], salient_features=b["salient"], threshold=t,
                                anomaly_maps=maps)
            rs = RsCINRescorer().fit(batch)
            if rule:  # RsCIN's "auto" with the same constants
                rs = RsCINRescorer(threshold=auto_threshold(rs.anomaly_scores_, **rule)).fit(batch)
            sr = rs.anomaly_scores_
            old = sr > mad_rule(3)(sr)
            masks = rs.anomaly_masks_  # the pipeline's masks: they follow RsCIN's labels
            if kind == "clean":
                row[kind] = dict(n=len(y), det=int(np.sum(lab == -1)), new=int(np.sum(rs.labels_ == -1)),
                                 old=int(old.sum()), pix=float(masks.mean()))
            else:
                gt = r["masks"][b["idx"]]
                fm, fmr = image_f1_max(y, s), image_f1_max(y, sr)
                pm = pixel_f1_max(gt, maps)
                tp = np.sum(masks & gt)
                pf = 2 * tp / (masks.sum() + gt.sum()) if tp else 0.0
                # the same mask rule on the true image labels: what the labels cost the masks
                true = defect_masks(maps, np.where(y == 1, -1, 1))
                tp = np.sum(true & gt)
                pt = 2 * tp / (true.sum() + gt.sum()) if tp else 0.0
                row[kind] = dict(det=f1(y, lab == -1) / fm, new=f1(y, rs.labels_ == -1) / fmr,
                                 old=f1(y, old) / fmr, f1max=fmr, pix=pf / pm, pixmax=pm, pix_true=pt / pm)
        rows[c] = row
        print(c, {k: {m: round(v, 3) for m, v in d.items()} for k, d in row.items()}, flush=True)
    return rows


def table(rows):
    lines = ["| category | half | heavy: new / old (det) | prod: new / old (det) | clean flagged: new / old (det) "
             "| pixel F1 / F1-max: heavy, prod | same, true image labels | clean pixels marked |",
             "|---|---|---|---|---|---|---|---|"]
    for c, r in rows.items():
        h, p, cl = r["heavy"], r["prod"], r["clean"]
        lines.append(
            f"| {c} | {'tune' if c in TUNE else 'confirm'} | {h['new']:.2f} / {h['old']:.2f} ({h['det']:.2f}) "
            f"| {p['new']:.2f} / {p['old']:.2f} ({p['det']:.2f}) "
            f"| {cl['new']}/{cl['n']} / {cl['old']}/{cl['n']} ({cl['det']}) "
            f"| {h['pix']:.2f}, {p['pix']:.2f} | {h['pix_true']:.2f}, {p['pix_true']:.2f} "
            f"| {100 * cl['pix']:.3f} % |")
    for label, part in (("TUNE", [c for c in rows if c in TUNE]), ("confirm", [c for c in rows if c not in TUNE]),
                        ("all", list(rows))):
        if not part:
            continue
        m = lambda kind, key: np.mean([rows[c][kind][key] for c in part])  # noqa: E731
        n = sum(rows[c]["clean"]["n"] for c in part)
        flag = lambda key: sum(rows[c]["clean"][key] for c in part)  # noqa: E731
        lines.append(
            f"| **mean {label}** ({len(part)}) | | {m('heavy', 'new'):.3f} / {m('heavy', 'old'):.3f} "
            f"({m('heavy', 'det'):.3f}) | {m('prod', 'new'):.3f} / {m('prod', 'old'):.3f} ({m('prod', 'det'):.3f}); "
            f"min {min(rows[c]['prod']['new'] for c in part):.2f} "
            f"| {flag('new')}/{n} = {100 * flag('new') / n:.1f} % / {flag('old')}/{n} ({flag('det')}) "
            f"| {m('heavy', 'pix'):.3f}, {m('prod', 'pix'):.3f} "
            f"| {m('heavy', 'pix_true'):.3f}, {m('prod', 'pix_true'):.3f} | {100 * m('clean', 'pix'):.3f} % |")
    return "\n".join(lines)


def threshold_options(y, s, clean):
    """For every cut of ``s``: (clean images above it, best F1 / F1-max at that count).

    ``clean`` holds the scores of the same product's clean batch; the scores
    are on the detector's scale, so one threshold applies to both batches.
    """
    fm = image_f1_max(y, s)
    x = np.sort(s)[::-1]
    best = {}
    for t in np.concatenate([[x[0] + 1.0], 0.5 * (x[:-1] + x[1:]), [x[-1] - 1.0]]):
        n = int(np.sum(clean > t))
        best[n] = max(best.get(n, 0.0), f1(y, s > t) / fm)
    return best


def clean_needed(options, floor=0.7):
    """The fewest clean images flagged by a threshold reaching ``floor`` (F1 / F1-max), or None."""
    return min((n for n, ratio in options.items() if ratio >= floor - 1e-9), default=None)


def bound(data, kind, budget):
    """The best mean F1 / F1-max over categories that thresholds chosen WITH the labels reach.

    One threshold per category, applied to the ``kind`` batch and to the
    same product's clean batch, flagging at most ``budget`` clean images over
    all categories (the clean target). No label-free rule that gives both
    batches of a product the same threshold can do better; a rule can only
    do better where it tells the two batches apart. Returns the mean, the
    per-category (ratio, clean images flagged) of the best allocation
    (dynamic programme over the clean images flagged) and each category's
    :func:`threshold_options`.
    """
    options = {}
    for c, r in data.items():
        b, cl = r[kind], r["clean"]
        options[c] = threshold_options(b["labels"], rscin_raw(b), rscin_raw(cl))
    table = {0: (0.0, {})}  # clean images flagged -> (sum of ratios, choice per category)
    for c, opts in options.items():
        nxt = {}
        for used, (total, pick) in table.items():
            for n, ratio in opts.items():
                if used + n <= budget and (used + n not in nxt or nxt[used + n][0] < total + ratio):
                    nxt[used + n] = (total + ratio, {**pick, c: (ratio, n)})
        table = nxt
    total, pick = max(table.values(), key=lambda v: v[0])
    return total / len(options), pick, options


def print_bounds(data):
    n_clean = sum(len(r["clean"]["labels"]) for r in data.values())
    budget = int(0.01 * n_clean)
    print(f"clean images: {n_clean}; the clean target allows {budget} flagged")
    for kind in ("prod", "heavy"):
        mean, pick, options = bound(data, kind, budget)
        print(f"\n{kind}: best mean F1 / F1-max with <= {budget} clean images flagged: {mean:.3f}")
        for c, (ratio, n) in pick.items():
            opts = options[c]
            need = clean_needed(opts)
            print(f"  {c:11s} {ratio:.2f} ({n} clean flagged); at 0 flagged {opts.get(0, 0.0):.2f}; "
                  f"clean flagged for >= 0.70: {need} of {len(data[c]['clean']['labels'])}")


def separable(data):
    """How far each product's defect-heavy batch can be told from its clean batch, given both.

    A label-free rule sees one batch; to give the heavy batch a lower
    threshold than the clean one it must tell them apart from their scores.
    With BOTH batches in hand, the two-sample Kolmogorov-Smirnov test and the
    AUROC of "heavy batch vs clean batch" on RsCIN's final values say how much
    any rule could tell, at best. A rule that does not know the product's
    normal score level reads only the shape of a batch (every rule measured
    here is invariant to the scores' location and scale: robust z-scores,
    mixtures of standardised scores, pythresh's min-max scaling), so the
    same test is repeated on each batch standardised by its own median and
    1.4826 x MAD.
    """
    import warnings

    from scipy.stats import anderson_ksamp, cramervonmises_2samp, ks_2samp
    from sklearn.metrics import roc_auc_score

    from sklearn_musc.thresholds import robust_scale

    def standardised(x):
        med = np.median(x)
        return (x - med) / robust_scale(x, med)[0]

    for c, r in data.items():
        h, cl = rscin_raw(r["heavy"]), rscin_raw(r["clean"])
        auc = roc_auc_score(np.r_[np.ones(len(h)), np.zeros(len(cl))], np.r_[h, cl])
        sh, sc = standardised(h), standardised(cl)
        with warnings.catch_warnings():  # anderson_ksamp: its p-value is capped at 0.25; a renamed argument
            warnings.simplefilter("ignore", UserWarning)
            ad = anderson_ksamp([sh, sc]).pvalue
        print(f"{c:11s} heavy vs clean: KS p = {ks_2samp(h, cl).pvalue:.2g}, AUROC {auc:.2f}; standardised: "
              f"KS p = {ks_2samp(sh, sc).pvalue:.2g}, Anderson-Darling p = {ad:.2g} "
              f"(capped at 0.25), Cramer-von Mises p = {cramervonmises_2samp(sh, sc).pvalue:.2g}", flush=True)


def carry(data):
    """The rule's threshold on a product's clean batch, given as ``threshold=`` to its other batches.

    What the README recommends when a clean batch of the product exists:
    label F1 / F1-max of the defect-heavy and production-like batches (RsCIN's
    values) with the threshold of ``contamination="auto"`` on the clean batch.
    """
    from sklearn_musc.thresholds import auto_threshold

    rows = {}
    for c, r in data.items():
        t = auto_threshold(rscin_raw(r["clean"]))
        rows[c] = []
        for kind in ("heavy", "prod"):
            y, s = r[kind]["labels"], rscin_raw(r[kind])
            rows[c].append(f1(y, s > t) / image_f1_max(y, s))
        print(f"{c:11s} heavy {rows[c][0]:.2f} prod {rows[c][1]:.2f}", flush=True)
    for label, part in (("TUNE", [c for c in rows if c in TUNE]), ("confirm", [c for c in rows if c not in TUNE]),
                        ("all", list(rows))):
        if part:
            m = np.array([rows[c] for c in part])
            print(f"{label}: heavy {m[:, 0].mean():.3f} prod {m[:, 1].mean():.3f} (min {m[:, 1].min():.2f})")


def resolution_check(size, cats):
    """The production bound of ``cats`` with the ViT at ``size`` px (uses labels, like :func:`bound`).

    Only the production-like and clean batches are scored (good images and
    the production batch's defective ones, the same seed), so a larger size
    stays affordable on a CPU. Per category: the production batch's image
    AUROC and F1-max after RsCIN, the best F1 / F1-max of a threshold that
    flags no clean image, and how many clean images a threshold reaching
    0.70 flags (the target's per-category floor).
    """
    from sklearn.metrics import roc_auc_score

    from _cache import DATA, vit
    from sklearn_musc.datasets import load_mvtec

    for c in cats:
        t0 = time.perf_counter()
        data = load_mvtec(DATA, c)
        labels = np.asarray(data.labels)
        batches = {kind: batch_indices(labels, kind) for kind in ("prod", "clean")}
        need = np.union1d(batches["prod"], batches["clean"])
        feats = LNAMDTransformer(device="cpu").fit_transform(vit(size).fit().transform([data.paths[i] for i in need]))
        final = {}
        for kind, idx in batches.items():
            det = MutualScoringDetector(device="cpu")
            out = det.fit_transform(feats.take(np.searchsorted(need, idx)))
            final[kind] = rscin_raw(dict(image=det.anomaly_scores_, salient=out.salient_features))
        y, s = labels[batches["prod"]], final["prod"]
        opts = threshold_options(y, s, final["clean"])
        need70 = clean_needed(opts)
        print(f"{c:11s} {size} px: production AUROC {roc_auc_score(y, s):.3f}, F1-max {image_f1_max(y, s):.2f}; "
              f"at 0 clean flagged {opts.get(0, 0.0):.2f}; clean flagged for >= 0.70: {need70} of "
              f"{len(batches['clean'])} ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    what = argv[0] if argv else "compute"
    if what == "resolution":
        return resolution_check(int(argv[1]), argv[2:] or ("screw", "zipper", "capsule"))
    cats = argv[1:] or categories()
    if what == "compute":
        for c in cats:
            compute(c)
    elif what in ("rules", "pythresh", "sweep", "impl"):
        cats = cached(cats)
        data = load_all(cats)
        rules = {"rules": RULES, "sweep": SWEEP, "impl": IMPL}.get(what) or pythresh_rules()
        rows = evaluate_rules(data, rules)
        tune = [c for c in cats if c in TUNE]
        other = [c for c in cats if c not in TUNE]
        for label, part in (("TUNE", tune), ("confirm", other), ("all", cats)):
            if part:
                summarise(rows, part, label)
        if "-v" in os.environ.get("LABELS_FLAGS", ""):
            for name, per in rows.items():
                for c in cats:
                    print(name, c, {k: np.round(v, 2) for k, v in per[c].items()})
    elif what == "carry":
        carry(load_all(cached(cats)))
    elif what == "separable":
        separable(load_all(cached(cats)))
    elif what == "bound":
        print_bounds(load_all(cached(cats)))
    elif what == "table":
        cats = cached(cats)
        # LABELS_SKEW_GUARD=0: the rule without its Gumbel guard
        rule = {"skew_guard": False} if os.environ.get("LABELS_SKEW_GUARD") == "0" else {}
        rows = final_rows(load_all(cats), **rule)
        print(table(rows))
    else:
        raise SystemExit(f"unknown command {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
