"""Study for README "Decisions you can trust": conformal p-values on the shared MVTec AD.

Every image of a category is scored by mutual scoring against pools of its
good images drawn at random (DINOv2 ViT-S/14 at 224, the default LNAMD and
MSM settings). One matrix per category holds, for every image, feature set
and patch, its best match in every other image of the category, computed
once (``table``); every split then reads its pool's columns from it, exactly
as ``MutualScoringDetector(novelty=True)`` scores new images and calibrates
its pool (``check`` compares the two on one split per category).

    python studies/conformal.py table        # the best-match tables (cached in $MUSC_CACHE/conformal)
    python studies/conformal.py check        # the table path equals the estimator on one split each
    python studies/conformal.py validity     # false alarms at alpha 0.01/0.05/0.1, 20 splits, and power
    python studies/conformal.py fdr          # Benjamini-Hochberg at q = 0.1 with 20 references
    python studies/conformal.py masks        # calibrated masks against the half-height rule
    python studies/conformal.py drift        # the drift alarm on unchanged and changed streams
    python studies/conformal.py synthetic    # pools of 200 synthetic images: alpha = 0.01

Nothing here is part of the package.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cache import CACHE, TUNE, categories, load  # noqa: E402

from sklearn_musc import (DriftMonitor, LNAMDTransformer, MutualScoringDetector,  # noqa: E402
                          benjamini_hochberg, conformal_pvalues)

OUT = CACHE / "conformal"
ALPHAS = (0.01, 0.05, 0.1)
N_SPLITS = 20
DETECTOR = MutualScoringDetector()  # the defaults the study measures
INPUT = 224


def bounds(n_images, det=DETECTOR):
    """``(k_min, k_max)`` of an image among ``n_images``, as the detector computes them (docs/algorithm.rst)."""
    others = n_images - 1
    k_max = max(1, int(math.floor(others * det.topmin_max)))
    return min(int(math.floor(others * det.topmin_min)), k_max - 1), k_max


def chosen():
    """The categories named after the command, else all 15."""
    return sys.argv[2:] or categories()


def features(category):
    return LNAMDTransformer(device="cpu").fit_transform(load(category)["tokens"])


def table(category, X=None):
    """``T[a, s, l, b]``: best dot product of patch ``l`` of image ``a`` in image ``b`` (set ``s``); -inf on a == b."""
    path = OUT / f"{category}.npy"
    if path.exists():
        return np.load(path)
    X = features(category).features if X is None else X
    n, S, h, w, C = X.shape
    L = h * w
    T = np.empty((n, S, L, n), dtype=np.float32)
    with torch.inference_mode():
        for s in range(S):
            Z = F.normalize(torch.as_tensor(X[:, s]).float().reshape(n, L, C), dim=-1)
            for a in range(n):  # each pair multiplied once: rows give (a, b), columns (b, a)
                prod = (Z[a] @ Z[a:].reshape(-1, C).T).view(L, n - a, L)
                T[a, s, :, a:] = prod.amax(dim=2).numpy()
                T[a:, s, :, a] = prod.amax(dim=0).numpy()
            T[np.arange(n), s, :, np.arange(n)] = -np.inf
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), T)
    path.with_suffix(".tmp.npy").replace(path)
    return T


def image_scores(T, rows, cols, n_scorers, grid=(16, 16), return_maps=False):
    """Scores of images ``rows`` scored by images ``cols`` with the bounds of a batch of ``n_scorers`` + 1.

    An image among ``cols`` has its own -inf column there: the calibration
    bound (the new image taken infinitely far away), as the detector's pool.
    """
    k_min, k_max = bounds(n_scorers + 1)
    sims = torch.as_tensor(T[np.ix_(rows, range(T.shape[1]), range(T.shape[2]), cols)])
    best = torch.topk(sims, k_max, dim=3, sorted=True).values[..., k_min:k_max]
    patch = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0)).mean(dim=3).mean(dim=1)
    maps = F.interpolate(patch.reshape(len(rows), 1, *grid), size=(INPUT, INPUT), mode="bilinear",
                         align_corners=True)[:, 0]
    scores = maps.reshape(len(rows), -1).amax(dim=1).numpy().astype(np.float64)
    return (scores, maps.numpy()) if return_maps else scores


def splits(n_good, seed, n_pool=None):
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_good)
    k = n_good // 2 if n_pool is None else n_pool
    return order[:k], order[k:]


def split_pvalues(T, labels, seed, n_pool=None):
    """p-values of the test goods and the defective images against a random pool of goods."""
    goods = np.nonzero(labels == 0)[0]
    bad = np.nonzero(labels == 1)[0]
    p_idx, t_idx = splits(len(goods), seed, n_pool)
    pool, test = goods[p_idx], goods[t_idx]
    calib = image_scores(T, pool, pool, len(pool))
    s_good = image_scores(T, test, pool, len(pool))
    s_bad = image_scores(T, bad, pool, len(pool))
    return pool, test, calib, s_good, s_bad


def check():
    """The table path against MutualScoringDetector(novelty=True) on one split per category."""
    worst = 0.0
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        pool, test, calib, s_good, s_bad = split_pvalues(T, labels, seed=0)
        feats = features(c)
        det = MutualScoringDetector(novelty=True, device="cpu").fit(feats.take(pool))
        new = np.r_[test, np.nonzero(labels == 1)[0]]
        ours = np.r_[s_good, s_bad]
        theirs = det.transform(feats.take(new))
        d = max(np.abs(det.calibration_scores_ - calib).max(), np.abs(theirs.scores - ours).max())
        same_p = np.array_equal(theirs.pvalues, conformal_pvalues(calib, ours))
        worst = max(worst, d)
        print(f"{c:12s} largest score difference {d:.2e}, same p-values: {same_p}", flush=True)
    print(f"largest difference over the categories: {worst:.2e}")


def oracle_recall(s_good, s_bad, far):
    """Recall of the best threshold chosen with the labels whose false-alarm rate on the test goods is <= far."""
    allowed = int(math.floor(far * len(s_good) + 1e-9))
    t = np.sort(s_good)[::-1][allowed] if allowed < len(s_good) else -np.inf
    return float((s_bad > t).mean())


def validity(n_pool=None, label="half"):
    rows, out = [], {}
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        fa = {a: [0, 0] for a in ALPHAS}
        power = {a: [] for a in ALPHAS}
        oracle = {a: [] for a in ALPHAS}
        pool_size = None
        for seed in range(N_SPLITS):
            pool, test, calib, s_good, s_bad = split_pvalues(T, labels, seed, n_pool)
            pool_size = len(pool)
            p_good, p_bad = conformal_pvalues(calib, s_good), conformal_pvalues(calib, s_bad)
            for a in ALPHAS:
                fa[a][0] += int((p_good <= a).sum())
                fa[a][1] += len(p_good)
                power[a].append(float((p_bad <= a).mean()))
                oracle[a].append(oracle_recall(s_good, s_bad, float((p_good <= a).mean())))
        out[c] = dict(pool=pool_size, test=fa[ALPHAS[0]][1] // N_SPLITS,
                      false_alarms={str(a): fa[a] for a in ALPHAS},
                      recall={str(a): float(np.mean(power[a])) for a in ALPHAS},
                      oracle={str(a): float(np.mean(oracle[a])) for a in ALPHAS})
        rows.append(c)
        print(c, json.dumps(out[c]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"validity-{label}.json").write_text(json.dumps(out, indent=1))
    print_validity(out)


def binomial_bound(a, n):
    return a + 2 * math.sqrt(a * (1 - a) / n)


def print_validity(out):
    """Per category: false-alarm rates at each alpha; recall and efficiency at 0.05 and 0.1 where reachable."""
    power_at = ("0.05", "0.1")
    print("\n| category | pool | test goods | " + " | ".join(f"FA at {a}" for a in ALPHAS) + " | "
          + " | ".join(f"recall / best-threshold recall at {a}" for a in power_at) + " |")
    print("|---|---|---|" + "---|" * (len(ALPHAS) + len(power_at)))
    tot = {a: [0, 0] for a in ALPHAS}
    effs = {a: [] for a in power_at}
    for c, r in out.items():
        cells = []
        for a in ALPHAS:
            k, n = r["false_alarms"][str(a)]
            tot[a][0] += k
            tot[a][1] += n
            flag = "" if k / n <= binomial_bound(a, n) else " (over the bound)"
            cells.append(f"{k / n:.3f}{flag}" if r["pool"] + 1 >= 1 / a else "-")
        for a in power_at:
            rec, orc = r["recall"][a], r["oracle"][a]
            if r["pool"] + 1 < 1 / float(a):
                cells.append("pool too small")
                continue
            cells.append(f"{rec:.3f} / {orc:.3f}")
            if orc > 0:
                effs[a].append(rec / orc)
        print(f"| {c} | {r['pool']} | {r['test']} | " + " | ".join(cells) + " |")
    cells = [f"{tot[a][0] / tot[a][1]:.4f} (bound {binomial_bound(a, tot[a][1]):.4f})" for a in ALPHAS]
    cells += [f"efficiency {np.mean(effs[a]):.3f} ({len(effs[a])} categories)" if effs[a] else "-" for a in power_at]
    print(f"| all | | {tot[ALPHAS[0]][1]} | " + " | ".join(cells) + " |")


def fdr(q=0.1, n_refs=20):
    """BH at level q on the defect-heavy batch (the test set less the references), 20 splits."""
    out = {}
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        goods = np.nonzero(labels == 0)[0]
        if len(goods) < n_refs + 5:
            out[c] = dict(skipped=f"{len(goods)} good images: fewer than {n_refs} references + 5 in the batch")
            print(c, out[c], flush=True)
            continue
        fdps, powers, flagged = [], [], []
        for seed in range(N_SPLITS):
            refs = goods[np.random.default_rng(seed).permutation(len(goods))[:n_refs]]
            batch = np.setdiff1d(np.arange(len(labels)), refs)
            everyone = np.r_[batch, refs]
            n_all = len(everyone)
            # a batch image: scored by the rest of the batch and the references; a reference: by the
            # batch and the other references (its own column is -inf), both with the bounds of n_all
            s_batch = image_scores(T, batch, everyone, n_all - 1)
            s_refs = image_scores(T, refs, everyone, n_all - 1)
            rejected, _ = benjamini_hochberg(conformal_pvalues(s_refs, s_batch), q)
            bad = labels[batch] == 1
            fdps.append(float((rejected & ~bad).sum() / max(1, rejected.sum())))
            powers.append(float((rejected & bad).sum() / bad.sum()))
            flagged.append(int(rejected.sum()))
        out[c] = dict(batch=len(batch), defective=int(bad.sum()), fdp=float(np.mean(fdps)),
                      power=float(np.mean(powers)), flagged=float(np.mean(flagged)))
        print(c, json.dumps(out[c]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fdr.json").write_text(json.dumps(out, indent=1))
    print("\n| category | batch | defective | flagged (mean) | FDP (mean of 20) | power |")
    print("|---|---|---|---|---|---|")
    done = [r for r in out.values() if "fdp" in r]
    for c, r in out.items():
        if "fdp" in r:
            print(f"| {c} | {r['batch']} | {r['defective']} | {r['flagged']:.1f} | {r['fdp']:.3f} | {r['power']:.3f} |")
        else:
            print(f"| {c} | {r['skipped']} | | | | |")
    print(f"| mean of {len(done)} | | | | {np.mean([r['fdp'] for r in done]):.3f} "
          f"| {np.mean([r['power'] for r in done]):.3f} |")


def _f1(pred, gt):
    tp = np.logical_and(pred, gt).sum()
    denom = pred.sum() + gt.sum()
    return 2.0 * tp / denom if denom else 1.0


def _f1_max(maps, gt):
    """The best pixel F1 of any one threshold on the maps (exact: every cut of the sorted values)."""
    values, truth = maps.ravel(), gt.ravel()
    order = np.argsort(-values, kind="stable")
    tp = np.cumsum(truth[order])
    k = np.arange(1, len(values) + 1)
    last = np.r_[values[order][1:] != values[order][:-1], True]  # cut only between distinct values
    f1 = 2.0 * tp / (k + truth.sum())
    return float(f1[last].max())


def half_height(maps):
    flat = maps.reshape(len(maps), -1)
    background = np.median(flat, axis=1)
    level = background + 0.5 * (flat.max(axis=1) - background)
    return maps > level[:, None, None]


def masks(alpha=0.1, seeds=5):
    """Pixel F1 / F1-max of the masks of the images flagged at alpha, by each rule, over the test images."""
    rules = ("half-height", "image threshold", "pool pixels 0.1 %", "pool pixels 1 %")
    out = {}
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        gt_all = np.asarray(e["masks"]).astype(bool)
        ratios = {r: [] for r in rules}
        for seed in range(seeds):
            goods = np.nonzero(labels == 0)[0]
            p_idx, t_idx = splits(len(goods), seed)
            pool, test = goods[p_idx], goods[t_idx]
            calib, pool_maps = image_scores(T, pool, pool, len(pool), return_maps=True)
            if len(pool) + 1 < 1 / alpha:
                break
            rows = np.r_[test, np.nonzero(labels == 1)[0]]
            scores, maps = image_scores(T, rows, pool, len(pool), return_maps=True)
            flagged = conformal_pvalues(calib, scores) <= alpha
            gt = gt_all[rows]
            best = _f1_max(maps, gt)
            g = int(math.floor(alpha * (len(pool) + 1))) - 1
            image_level = np.sort(calib)[::-1][g]
            for rule in rules:
                if rule == "half-height":
                    pred = half_height(maps)
                elif rule == "image threshold":
                    pred = maps > image_level
                else:
                    share = 0.001 if "0.1" in rule else 0.01
                    pred = maps > np.quantile(pool_maps, 1 - share)
                pred &= flagged[:, None, None]
                ratios[rule].append(_f1(pred, gt) / best if best > 0 else 0.0)
        if ratios[rules[0]]:
            out[c] = {r: float(np.mean(v)) for r, v in ratios.items()}
            print(c, json.dumps(out[c]), flush=True)
        else:
            print(c, f"pool of {len(pool)} too small for alpha={alpha}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "masks.json").write_text(json.dumps(out, indent=1))
    print(f"\n| rule (masks of images flagged at alpha = {alpha}) | TUNE | confirm | all |")
    print("|---|---|---|---|")
    for r in rules:
        t = [v[r] for c, v in out.items() if c in TUNE]
        o = [v[r] for c, v in out.items() if c not in TUNE]
        print(f"| {r} | {np.mean(t):.3f} | {np.mean(o):.3f} | {np.mean(t + o):.3f} |")


CHANGES = ("brighter (x1.3)", "blurred (radius 2)", "other product 20 %")


def changed_scores(category, pool, test):
    """Scores against the pool of the test goods after each simulated change (needs the backbone)."""
    from PIL import Image, ImageEnhance, ImageFilter
    from _cache import vit

    e = load(category)
    feats = features(category)
    det = MutualScoringDetector(novelty=True, device="cpu").fit(feats.take(pool))
    images = [Image.open(e["paths"][i]).convert("RGB") for i in test]
    model = vit().fit()
    lnamd = LNAMDTransformer(device="cpu")
    out = {}
    for name, change in (("brighter (x1.3)", lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
                         ("blurred (radius 2)", lambda im: im.filter(ImageFilter.GaussianBlur(2)))):
        out[name] = det.transform(lnamd.fit_transform(model.transform([change(im) for im in images]))).scores
    others = [c for c in categories() if c != category]
    other = others[sorted(categories()).index(category) % len(others)]
    o = load(other)
    goods = np.nonzero(np.asarray(o["labels"]) == 0)[0][:20]
    out["other product 20 %"] = det.transform(features(other).take(goods)).scores
    return out


def drift(n_streams=200, length=1000, change_at=500, level=0.01):
    """False alarms of DriftMonitor on unchanged streams and detection delays on changes (see README)."""
    out = {}
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        goods = np.nonzero(labels == 0)[0]
        p_idx, t_idx = splits(len(goods), 0)
        pool, test = goods[p_idx], goods[t_idx]
        s_good = image_scores(T, test, pool, len(pool))
        rng = np.random.default_rng(1)
        alarms = sum(DriftMonitor(level=level, random_state=i).fit(rng.choice(s_good, size=length)).alarm_
                     for i in range(n_streams))
        row = dict(pool=len(pool), false_alarm_rate=alarms / n_streams)
        changed = changed_scores(c, pool, test)
        for name in CHANGES:
            delays, early = [], 0
            for i in range(50):
                after = rng.choice(changed[name], size=length - change_at)
                if name.startswith("other"):  # one part in five from the other product
                    mixed = rng.uniform(size=len(after)) < 0.2
                    after = np.where(mixed, after, rng.choice(s_good, size=len(after)))
                m = DriftMonitor(level=level, random_state=i).fit(np.r_[rng.choice(s_good, size=change_at), after])
                if m.alarm_ and m.alarm_index_ < change_at:
                    early += 1
                elif m.alarm_:
                    delays.append(m.alarm_index_ - change_at)
            row[name] = dict(detected=len(delays) / 50, early=early / 50,
                             median_delay=float(np.median(delays)) if delays else None)
        out[c] = row
        print(c, json.dumps(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "drift.json").write_text(json.dumps(out, indent=1))
    print(f"\n| category | pool | false alarms, {n_streams} unchanged streams of {length} | "
          + " | ".join(f"{n}: detected / median delay" for n in CHANGES) + " |")
    print("|---|---|---|" + "---|" * len(CHANGES))
    for c, r in out.items():
        cells = [f"{r[n]['detected']:.2f} / {r[n]['median_delay'] if r[n]['median_delay'] is not None else '-'}"
                 for n in CHANGES]
        print(f"| {c} | {r['pool']} | {r['false_alarm_rate']:.3f} | " + " | ".join(cells) + " |")
    rates = [r["false_alarm_rate"] for r in out.values()]
    print(f"| all | | {np.mean(rates):.4f} (nominal {level}) |")


def synthetic(n_good=260, n_bad=40, n_pool=200, kind="texture"):
    """Pools of 200 synthetic good images (make_synthetic_defects): alpha = 0.01 can be reached."""
    from _cache import vit
    from sklearn_musc.datasets import make_synthetic_defects

    name = f"synthetic-{kind}"
    path = OUT / f"{name}.npy"
    data = make_synthetic_defects(n_images=n_good + n_bad, n_anomalous=n_bad, image_size=224, kind=kind,
                                  random_state=0)
    labels = np.asarray(data.labels)
    if not path.exists():
        tokens = vit().fit().transform(list(data.images))
        table(name, LNAMDTransformer(device="cpu").fit_transform(tokens).features)
    T = table(name)
    out = {}
    fa = {a: [0, 0] for a in ALPHAS}
    recall = {a: [] for a in ALPHAS}
    for seed in range(N_SPLITS):
        pool, test, calib, s_good, s_bad = split_pvalues(T, labels, seed, n_pool)
        p_good, p_bad = conformal_pvalues(calib, s_good), conformal_pvalues(calib, s_bad)
        for a in ALPHAS:
            fa[a][0] += int((p_good <= a).sum())
            fa[a][1] += len(p_good)
            recall[a].append(float((p_bad <= a).mean()))
    out = {str(a): dict(false_alarms=fa[a], rate=fa[a][0] / fa[a][1], bound=binomial_bound(a, fa[a][1]),
                        recall=float(np.mean(recall[a]))) for a in ALPHAS}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(f"\n{name}: pool {n_pool}, {n_good - n_pool} test goods and {n_bad} defective images per split, "
          f"{N_SPLITS} splits")
    print("| alpha | false alarms | rate | bound | recall |\n|---|---|---|---|---|")
    for a in ALPHAS:
        r = out[str(a)]
        print(f"| {a} | {r['false_alarms'][0]} of {r['false_alarms'][1]} | {r['rate']:.4f} | {r['bound']:.4f} "
              f"| {r['recall']:.3f} |")


def exact(alpha=0.1, seeds=5):
    """The calibration bound against exact full conformal (each pool image rescored with x as a scorer)."""
    print("| category | pool | mean p-value, bound / exact (defects) | recall at 0.1, bound / exact "
          "| FA at 0.1, bound / exact |\n|---|---|---|---|---|")
    for c in chosen():
        e, T = load(c), table(c)
        labels = np.asarray(e["labels"])
        pb, pe, rb, re_, fb, fe = [], [], [], [], [], []
        for seed in range(seeds):
            pool, test, calib, s_good, s_bad = split_pvalues(T, labels, seed)
            if len(pool) + 1 < 1 / alpha:
                break
            bad = np.nonzero(labels == 1)[0]
            goods = np.nonzero(labels == 0)[0]
            test_rows = np.setdiff1d(goods, pool)
            for rows, scores, is_bad in ((test_rows, s_good, False), (bad, s_bad, True)):
                for x, s in zip(rows, scores):
                    full = image_scores(T, pool, np.r_[pool, x], len(pool))
                    p_exact = (1 + (full >= s).sum()) / (len(pool) + 1)
                    p_bound = conformal_pvalues(calib, [s])[0]
                    if is_bad:
                        pb.append(p_bound)
                        pe.append(p_exact)
                        rb.append(p_bound <= alpha)
                        re_.append(p_exact <= alpha)
                    else:
                        fb.append(p_bound <= alpha)
                        fe.append(p_exact <= alpha)
        if pb:
            print(f"| {c} | {len(pool)} | {np.mean(pb):.4f} / {np.mean(pe):.4f} | {np.mean(rb):.3f} / "
                  f"{np.mean(re_):.3f} | {np.mean(fb):.3f} / {np.mean(fe):.3f} |", flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "validity"
    if cmd in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if cmd == "table":
        for c in sys.argv[2:] or categories():
            print(c, table(c).shape, flush=True)
    elif cmd == "exact":
        exact()
    elif cmd == "check":
        check()
    elif cmd == "validity":
        validity()
    elif cmd == "report":  # the tables again, from the saved results
        for label in ("half", "large"):
            if (OUT / f"validity-{label}.json").exists():
                print(f"\npools: {label}")
                print_validity(json.loads((OUT / f"validity-{label}.json").read_text()))
    elif cmd == "validity-large":  # pools of all goods but 5: the power a line with more good parts gets
        validity(n_pool=-5, label="large")
    elif cmd == "fdr":
        fdr()
    elif cmd == "masks":
        masks()
    elif cmd == "drift":
        drift()
    elif cmd == "synthetic":
        synthetic(kind=sys.argv[2] if len(sys.argv) > 2 else "texture")
    else:
        raise SystemExit(__doc__)
