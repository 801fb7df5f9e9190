"""Study for issue #23 (second part): ViT blocks, foreground masks, orientation, scale, on the shared MVTec AD.

DINOv2 ViT-S/14 at 224 px with the shared weights (tokens of blocks 2, 5, 8,
11 from ``_cache.py``), the default pipeline after the backbone (SNAMD
aggregation, ``topmin_max`` 0.2, RsCIN on the salient feature with windows
1, 7). Settings are chosen on the 8 TUNE categories of ``_cache.py`` and
confirmed on the other 7; no label enters a choice.

    python studies/accuracy.py compute [category ...]     # block subsets (cached)
    python studies/accuracy.py foreground [category ...]  # foreground="auto" (cached)
    python studies/accuracy.py combined [category ...]    # turned copies, second input size (cached)
    python studies/accuracy.py image-score [category ...] # max of the map against top-k means
    python studies/accuracy.py library [category ...]     # the library's turns option from the files
    python studies/accuracy.py cost [category]            # whole-pipeline time of each option
    python studies/accuracy.py table [category ...]       # per-category and mean tables
    python studies/accuracy.py --smoke                    # 2 categories, 24 images each, no cache

Per category and setting, image AUROC (after RsCIN; before it in "msm"),
pixel AUROC and PRO are kept in ``$MUSC_ACCURACY_CACHE`` (default
``/tmp/musc-accuracy-cache``).

Blocks: MSM scores each feature set (one per block with SNAMD) on its own
and averages the sets, so one fit on the four cached blocks gives every
subset of them (``set_patch_scores_`` averaged over the subset); the salient
feature and RsCIN are then taken from the subset as the detector does. One
category is checked against a direct fit on the subset (``check``).

Foreground: :class:`MutualScoringDetector` with ``foreground="auto"`` (the
label-free rule in its docstring) against ``foreground=None``.

Orientation and scale (blocks 2, 5, 8): for each category, one table of every
patch's highest similarity to each other image (``best_similarity``) per
scorer copy (the images themselves, turned by 90, 180, 270 degrees, mirrored)
and one of the images at 336 px; any combination of copies is the elementwise
maximum of their tables, so each is scored without a new product
(``scores_from_similarity``, equal to the direct kernel ``mutual_scores``).
The copies here turn the image before it is fitted to the input; the library
(``ViTPatchTransformer(turns=...)``) turns the fitted input (``library``).
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _cache import TUNE, categories, load  # noqa: E402

from sklearn_musc import ImageScores, LNAMDTransformer, MutualScoringDetector, RsCINRescorer  # noqa: E402
from sklearn_musc.interop import salient_features  # noqa: E402
from sklearn_musc.metrics import evaluate  # noqa: E402

OUT = Path(os.environ.get("MUSC_ACCURACY_CACHE", "/tmp/musc-accuracy-cache"))
HARD = ("screw", "zipper", "pill", "capsule")
# name -> (blocks, MSM parameters beyond the defaults)
SETTINGS = {
    "default (blocks 2,5,8,11)": ((2, 5, 8, 11), {}),
    "blocks 2,5,8": ((2, 5, 8), {}),
    "blocks 5,8,11": ((5, 8, 11), {}),
    "blocks 5,8": ((5, 8), {}),
}
MSM = dict(device="cpu", topmin_max=0.2)
RSCIN = dict(embedding="salient", k_list=(1, 7))


def _subset(tokens, blocks):
    keep = [tokens.layers.index(b) for b in blocks]
    return dataclasses.replace(tokens, tokens=tokens.tokens[:, keep], layers=tuple(blocks))


def _metrics(entry, msm_scores, final_scores, maps, pro=True):
    y, masks = entry["labels"], entry["masks"]
    pix = evaluate(y, msm_scores, masks, maps, pro=pro)
    return dict(image_auroc=evaluate(y, final_scores)["image_auroc"], msm_auroc=pix["image_auroc"],
                pixel_auroc=pix["pixel_auroc"], pro=pix.get("pro", np.nan))


def _from_sets(X, set_scores, sets, input_size):
    """What the detector returns on the feature sets ``sets`` alone, from its per-set patch scores."""
    patch = set_scores[:, list(sets)].mean(axis=1)
    maps = F.interpolate(torch.as_tensor(patch)[:, None], size=tuple(input_size), mode="bilinear",
                         align_corners=True)[:, 0].numpy()
    scores = maps.reshape(len(maps), -1).max(axis=1)
    # the detector's salient feature: the second-to-last block of the subset, smallest degree
    layer = sorted(sets)[-2] if len(sets) > 1 else sets[0]
    sal = salient_features(X.features[:, layer], patch)
    final = RsCINRescorer(**RSCIN).fit(ImageScores(scores=scores, salient_features=sal)).anomaly_scores_
    return scores, final, maps


def compute_blocks(category, entry=None, pro=True, cache=True):
    """One MSM fit on the four cached blocks, every block subset of ``SETTINGS`` from it."""
    path = OUT / category / "blocks.joblib"
    if cache and path.exists():
        return joblib.load(path)
    entry = entry or load(category)
    t0 = time.perf_counter()
    X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(entry["tokens"])
    det = MutualScoringDetector(**MSM).fit(X)
    seconds = time.perf_counter() - t0
    layers = entry["tokens"].layers
    out = dict(seconds=seconds, set_patch_scores=det.set_patch_scores_)
    for name, (blocks, extra) in SETTINGS.items():
        if extra:
            continue
        sets = [layers.index(b) for b in blocks]
        msm, final, maps = _from_sets(X, det.set_patch_scores_, sets, X.input_size)
        out[name] = _metrics(entry, msm, final, maps, pro=pro)
        out[name]["patch_scores"] = det.set_patch_scores_[:, sets].mean(axis=1)
        print(f"{category:11s} {name:28s} img {out[name]['image_auroc']:.3f} msm {out[name]['msm_auroc']:.3f} "
              f"pix {out[name]['pixel_auroc']:.3f} pro {out[name]['pro']:.3f} ({seconds:.0f} s fit)", flush=True)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(out, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return out


FOREGROUND_BLOCKS = ((2, 5, 8, 11), (2, 5, 8))
BEST_BLOCKS = (2, 5, 8)


def compute_foreground(category, blocks, entry=None):
    """A fit with ``foreground="auto"`` on ``blocks``; where the rule says no mask, nothing changes."""
    name = "fg " + ",".join(map(str, blocks))
    path = OUT / category / f"{name.replace(' ', '_')}.joblib"
    if path.exists():
        return joblib.load(path)
    entry = entry or load(category)
    t0 = time.perf_counter()
    X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(_subset(entry["tokens"], blocks))
    det = MutualScoringDetector(foreground="auto", **MSM)
    scores = det.fit_transform(X)
    seconds = time.perf_counter() - t0
    final = RsCINRescorer(**RSCIN).fit(scores).anomaly_scores_
    out = _metrics(entry, scores.scores, final, scores.anomaly_maps) if det.foreground_applied_ else {}
    out.update(seconds=seconds, applied=det.foreground_applied_, coverage=float(det.foreground_masks_.mean()),
               **det.foreground_stats_)
    print(f"{category:11s} {name:12s} applied {out['applied']} within {out['within_share']:.2f} border "
          f"{out['border_foreground']:.2f} cov {out['coverage']:.2f} "
          + (f"img {out['image_auroc']:.3f} msm {out['msm_auroc']:.3f} pix {out['pixel_auroc']:.3f} "
             f"pro {out['pro']:.3f}" if out["applied"] else ""), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return out


# Orientation: copies of every image turned / flipped (PIL transpose names), tokens kept in $MUSC_CACHE/rot
TURNS = {"rot90": "ROTATE_90", "rot180": "ROTATE_180", "rot270": "ROTATE_270", "flip": "FLIP_LEFT_RIGHT"}
ORIENTATIONS = {
    "none": (),
    "turns 90,180,270": ("rot90", "rot180", "rot270"),
    "turn 90": ("rot90",),
    "turn 180": ("rot180",),
    "flip": ("flip",),
    "turns + flip": ("rot90", "rot180", "rot270", "flip"),
}


def turned_tokens(category, turn):
    """ViT tokens of every image of ``category`` turned by ``turn`` (cached like ``_cache.load``)."""
    from PIL import Image

    from _cache import CACHE, vit

    path = CACHE / "rot" / f"{category}_{turn}.joblib"
    if path.exists():
        return joblib.load(path)
    entry = load(category)
    method = getattr(Image.Transpose, TURNS[turn])
    images = [Image.open(p).convert("RGB").transpose(method) for p in entry["paths"]]
    tokens = vit().fit().transform(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(tokens, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return tokens


def mutual_scores(sets, scorer_sets, topmin_max=0.2):
    """Interval-averaged patch scores (n, n_sets, h, w) with extra copies of the OTHER images as scorers.

    ``sets`` (n, n_sets, h, w, dim) are the batch's feature sets, ``scorer_sets`` a list of arrays of
    the same shape (the same images turned); a patch's distance to scorer image j is its smallest
    distance to any patch of j or of j's copies, never to the image itself or its copies.
    """
    n, n_sets, h, w, dim = sets.shape
    k = max(1, int(np.floor((n - 1) * topmin_max)))
    out = np.empty((n, n_sets, h, w), dtype=np.float32)
    for s in range(n_sets):
        def unit(a):
            return F.normalize(torch.as_tensor(np.ascontiguousarray(a[:, s]), dtype=torch.float32)
                               .reshape(n, h * w, dim), dim=-1)

        q = unit(sets)
        refs = [q] + [unit(c) for c in scorer_sets]
        for i in range(n):
            best = torch.full((h * w, n), -2.0)
            for r in refs:
                best = torch.maximum(best, (q[i] @ r.reshape(-1, dim).T).reshape(h * w, n, h * w).amax(-1))
            best[:, i] = float("-inf")
            dist = torch.sqrt(torch.clamp(2 - 2 * best, min=0.0))
            dist[:, i] = float("inf")
            out[i, s] = dist.sort(dim=1).values[:, :k].mean(1).reshape(h, w).numpy()
    return out


def best_similarity(sets, scorer_sets):
    """(n_sets, n, hw, n) float32: each patch's highest cosine similarity to any patch of scorer image j.

    ``sets`` and ``scorer_sets`` are (n, n_sets, h, w, dim) feature sets of the same n images (the
    scorers possibly turned); the maximum over several scorer copies is the elementwise maximum of their
    tables, so every combination of copies is read from one table per copy.
    """
    n, n_sets, h, w, dim = sets.shape
    out = np.empty((n_sets, n, h * w, n), dtype=np.float32)
    for s in range(n_sets):
        q = F.normalize(torch.as_tensor(np.ascontiguousarray(sets[:, s]), dtype=torch.float32)
                        .reshape(n, h * w, dim), dim=-1)
        r = F.normalize(torch.as_tensor(np.ascontiguousarray(scorer_sets[:, s]), dtype=torch.float32)
                        .reshape(n * h * w, dim), dim=-1)
        for i in range(n):
            out[s, i] = (q[i] @ r.T).reshape(h * w, n, h * w).amax(-1).numpy()
    return out


def scores_from_similarity(tables, h, w, topmin_max=0.2):
    """Interval-averaged patch scores (n, n_sets, h, w) from the elementwise maximum of ``tables``."""
    best = tables[0].copy()
    for t in tables[1:]:
        np.maximum(best, t, out=best)
    n_sets, n = best.shape[:2]
    k = max(1, int(np.floor((n - 1) * topmin_max)))
    best[:, np.arange(n), :, np.arange(n)] = -np.inf  # never the image itself (nor its copies)
    dist = np.sqrt(np.clip(2 - 2 * best, 0.0, None))
    # k smallest distances to the other images (the self column is +inf)
    part = np.partition(dist, k - 1, axis=-1)[..., :k].mean(-1)
    return part.transpose(1, 0, 2).reshape(n, n_sets, h, w)


def similarity_table(category, blocks, turn=None, entry=None):
    """``best_similarity`` of the category's images against themselves or their ``turn`` copies (cached)."""
    path = OUT / category / f"sim_{turn or 'none'}_{','.join(map(str, blocks))}.npy"
    if path.exists():
        return np.load(path)
    entry = entry or load(category)
    lnamd = LNAMDTransformer(device="cpu", aggregation="similarity")
    X = lnamd.fit_transform(_subset(entry["tokens"], blocks)).features
    Y = X if turn is None else lnamd.fit_transform(_subset(turned_tokens(category, turn), blocks)).features
    return _save_table(path, X, Y, f"{category:11s} table {turn or 'none':6s}")


def _save_table(path, X, Y, label):
    """``best_similarity(X, Y)``, timed, written to ``path`` whole or not at all."""
    t0 = time.perf_counter()
    table = best_similarity(X, Y)
    print(f"{label} {time.perf_counter() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        np.save(f, table)
    path.with_suffix(".tmp").replace(path)
    return table


# Scale: tokens of the same images at a second input size, kept in $MUSC_CACHE/s<size>
SCALES = {"224 + 336": 336}


def sized_tokens(category, size):
    """ViT tokens of every image of ``category`` at input size ``size`` (cached like ``_cache.load``)."""
    from _cache import CACHE, vit

    path = CACHE / f"s{size}" / f"{category}.joblib"
    if path.exists():
        return joblib.load(path)
    tokens = vit(size).fit().transform(load(category)["paths"])
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(tokens, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return tokens


def sized_table(category, blocks, size):
    """``best_similarity`` of the category's images at input size ``size`` (cached)."""
    path = OUT / category / f"sim_s{size}_{','.join(map(str, blocks))}.npy"
    if path.exists():
        return np.load(path)
    X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(
        _subset(sized_tokens(category, size), blocks)).features
    return _save_table(path, X, X, f"{category:11s} table s{size}")


def _patch_maps(set_scores, input_size):
    patch = set_scores.mean(axis=1)
    return F.interpolate(torch.as_tensor(patch)[:, None], size=tuple(input_size), mode="bilinear",
                         align_corners=True)[:, 0].numpy()


def combined_from_tables(category, blocks, size=None, turns=(), entry=None, alone=False):
    """Metrics with turned copies ``turns`` and, if ``size``, the maps of a second input size averaged in.

    ``alone``: the maps of input size ``size`` only (the 224 px maps are not used).

    The image score is the maximum of the averaged map; RsCIN's salient feature comes from the 224 px
    patch scores, as without the second size.
    """
    entry = entry or load(category)
    X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(_subset(entry["tokens"], blocks))
    h, w = X.features.shape[2:4]
    set_scores = scores_from_similarity([similarity_table(category, blocks, t, entry) for t in (None, *turns)],
                                        h, w)
    maps = _patch_maps(set_scores, X.input_size)
    if size:
        g = int(round(size / 14))
        sized = _patch_maps(scores_from_similarity([sized_table(category, blocks, size)], g, g), X.input_size)
        maps = sized if alone else (maps + sized) / 2
    scores = maps.reshape(len(maps), -1).max(axis=1)
    layer = len(blocks) - 2
    sal = salient_features(X.features[:, layer], set_scores.mean(axis=1))
    final = RsCINRescorer(**RSCIN).fit(ImageScores(scores=scores, salient_features=sal)).anomaly_scores_
    return _metrics(entry, scores, final, maps)


COMBINED = {  # name -> (second input size or None, turns, whether the second size is used alone)
    **{f"orientation: {name}": (None, turns, False) for name, turns in ORIENTATIONS.items() if turns},
    **{f"scale: {name}": (size, (), False) for name, size in SCALES.items()},
    "scale: 336 alone": (336, (), True),
    "scale: 224 + 336, turns 90,180,270": (336, ("rot90", "rot180", "rot270"), False),
}


def _combined_path(category, name, blocks):
    slug = name.replace(" ", "_").replace(":", "").replace(",", "-")
    return OUT / category / f"combined_{slug}_{','.join(map(str, blocks))}.joblib"


def compute_combined(category, name, blocks=BEST_BLOCKS):
    """``combined_from_tables`` for ``COMBINED[name]``, cached per category."""
    path = _combined_path(category, name, blocks)
    if path.exists():
        return joblib.load(path)
    size, turns, alone = COMBINED[name]
    out = combined_from_tables(category, blocks, size, turns, alone=alone)
    print(f"{category:11s} {name:34s} img {out['image_auroc']:.3f} msm {out['msm_auroc']:.3f} "
          f"pix {out['pixel_auroc']:.3f} pro {out['pro']:.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return out


def library(category, turns=("rot90",), blocks=BEST_BLOCKS):
    """The library's own option on ``category``: ``ViTPatchTransformer(turns=...)`` from the image files.

    The library turns the model input after the image is fitted, the study turns the image before, which
    differs by a fraction of a pixel on images that are not square; this measures the difference.
    """
    from _cache import vit

    entry = load(category)
    out = {}
    for name, t in (("none", None), ("turns " + ",".join(turns), turns)):
        t0 = time.perf_counter()
        tokens = vit().set_params(layers=list(blocks), turns=t).fit().transform(entry["paths"])
        X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(tokens)
        scores = MutualScoringDetector(**MSM).fit_transform(X)
        final = RsCINRescorer(**RSCIN).fit(scores).anomaly_scores_
        out[name] = _metrics(entry, scores.scores, final, scores.anomaly_maps)
        out[name]["seconds"] = time.perf_counter() - t0
        print(f"{category:11s} library {name:18s} " + " ".join(f"{k} {v:.3f}" for k, v in out[name].items()),
              flush=True)
    return out


IMAGE_SCORES = {"max (the detector's)": 1, "mean of the top 0.5 %": 250, "top 2 %": 1000, "top 10 %": 5000}


def image_score_variants(cats, blocks=BEST_BLOCKS):
    """Image AUROC (after RsCIN) with the image score the mean of the top pixels of the 224 x 224 map."""
    got = {}
    for c in cats:
        entry = load(c)
        X = LNAMDTransformer(device="cpu", aggregation="similarity", progress=False).fit_transform(
            _subset(entry["tokens"], blocks))
        set_scores = scores_from_similarity([similarity_table(c, blocks, None, entry)], *X.features.shape[2:4])
        top = -np.sort(-_patch_maps(set_scores, X.input_size).reshape(len(set_scores), -1), axis=1)
        sal = salient_features(X.features[:, len(blocks) - 2], set_scores.mean(axis=1))
        got[c] = {}
        for name, n in IMAGE_SCORES.items():
            rs = RsCINRescorer(**RSCIN).fit(ImageScores(scores=top[:, :n].mean(axis=1), salient_features=sal))
            got[c][name] = evaluate(entry["labels"], rs.anomaly_scores_)["image_auroc"]
        print(c, " ".join(f"{100 * v:.1f}" for v in got[c].values()), flush=True)
    for name in IMAGE_SCORES:
        def mean(part):
            return f"{100 * np.mean([got[c][name] for c in part]):.2f}" if part else "-"
        print(f"| {name} | {mean([c for c in cats if c in TUNE])} / {mean([c for c in cats if c not in TUNE])} / "
              f"{mean(cats)} |")


def check(category="bottle"):
    """The subset derived from the four-block fit equals a direct fit on the subset."""
    entry = load(category)
    got = compute_blocks(category, entry, pro=False, cache=False)["blocks 2,5,8"]
    X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(_subset(entry["tokens"], (2, 5, 8)))
    scores = MutualScoringDetector(**MSM).fit_transform(X)
    final = RsCINRescorer(**RSCIN).fit(scores).anomaly_scores_
    direct = _metrics(entry, scores.scores, final, scores.anomaly_maps, pro=False)
    print("derived", {k: got[k] for k in ("image_auroc", "msm_auroc", "pixel_auroc")})
    print("direct ", direct)
    assert abs(got["image_auroc"] - direct["image_auroc"]) < 1e-9
    assert abs(got["pixel_auroc"] - direct["pixel_auroc"]) < 1e-6


COSTS = {
    "today's default": {},
    "layers='inner'": dict(vit__layers="inner"),
    "layers='inner' + foreground='auto'": dict(vit__layers="inner", msm__foreground="auto"),
    "layers='inner' + turns rot180": dict(vit__layers="inner", vit__turns=("rot180",)),
    "layers='inner' + turns rot90, rot180, rot270": dict(vit__layers="inner", vit__turns=("rot90", "rot180", "rot270")),
    "layers='inner', image_size 336 (the second size alone)": dict(vit__layers="inner", vit__image_size=336),
}


def cost(category="bottle", repeats=int(os.environ.get("ACCURACY_REPEATS", "1"))):
    """Whole-pipeline seconds of each setting of ``COSTS`` on one category's images, interleaved, and ratios."""
    from _cache import DATA, WEIGHTS

    from sklearn_musc import make_musc_pipeline
    from sklearn_musc.datasets import load_mvtec

    paths = list(load_mvtec(DATA, category).paths)
    common = dict(vit__backbone="timm:vit_small_patch14_dinov2", vit__pretrained=str(WEIGHTS),
                  vit__device="cpu", vit__progress=False, lnamd__device="cpu",
                  msm__device="cpu", msm__progress=False)
    times = {name: [] for name in COSTS}
    for _ in range(repeats):
        for name, extra in COSTS.items():
            pipe = make_musc_pipeline("default", **{"vit__image_size": 224, **common, **extra})
            t0 = time.perf_counter()
            pipe.fit_predict(paths)
            times[name].append(time.perf_counter() - t0)
    base = min(times["today's default"])
    print(f"{category}, {len(paths)} images, best of {repeats} (interleaved):")
    for name, t in times.items():
        print(f"| {name} | {min(t):.1f} s | {min(t) / base:.2f}x |")


def _rows(cats):
    """{setting: {category: metrics}} of everything computed so far."""
    rows = {}
    for c in cats:
        got = joblib.load(OUT / c / "blocks.joblib") if (OUT / c / "blocks.joblib").exists() else None
        if got is None:
            continue
        for name in SETTINGS:
            rows.setdefault(name, {})[c] = got[name]
        for blocks in FOREGROUND_BLOCKS:
            name = "fg " + ",".join(map(str, blocks))
            path = OUT / c / f"{name.replace(' ', '_')}.joblib"
            if path.exists():
                fg = joblib.load(path)
                base = got["default (blocks 2,5,8,11)" if len(blocks) == 4 else "blocks " + ",".join(map(str, blocks))]
                rows.setdefault(f"foreground auto, blocks {','.join(map(str, blocks))}", {})[c] = (
                    fg if fg["applied"] else {**base, "applied": False})
        for name in COMBINED:
            path = _combined_path(c, name, BEST_BLOCKS)
            if path.exists():
                rows.setdefault(f"{name}, blocks {','.join(map(str, BEST_BLOCKS))}", {})[c] = joblib.load(path)
    return rows


def table(cats):
    """Means (TUNE / confirm / all) and the per-category rows, percent."""
    rows = _rows(cats)
    lines = ["| setting | categories | image AUROC: TUNE / confirm / all | pixel AUROC | PRO | "
             + " | ".join(HARD) + " |", "|---" * (5 + len(HARD)) + "|"]
    for name, got in rows.items():
        have = list(got)
        tune = [c for c in have if c in TUNE]
        conf = [c for c in have if c not in TUNE]

        def mean(part, key):
            return f"{100 * np.mean([got[c][key] for c in part]):.1f}" if part else "-"

        hard = " | ".join(f"{100 * got[c]['image_auroc']:.1f}" if c in got else "-" for c in HARD)
        lines.append(f"| {name} | {len(tune)} + {len(conf)} | {mean(tune, 'image_auroc')} / "
                     f"{mean(conf, 'image_auroc')} / {mean(have, 'image_auroc')} | {mean(have, 'pixel_auroc')} "
                     f"| {mean(have, 'pro')} | {hard} |")
    full = [got for got in rows.values() if all(c in got for c in cats)]
    if len(full) > 1:  # what no label-free choice can beat: each category's best complete row
        best = {c: max(got[c]["image_auroc"] for got in full) for c in cats}

        def bound(part):
            return f"{100 * np.mean([best[c] for c in part]):.1f}" if part else "-"

        lines.append(f"| each category's best of the {len(full)} complete rows (picked with labels: a bound) | "
                     f"{sum(c in TUNE for c in cats)} + {sum(c not in TUNE for c in cats)} | "
                     f"{bound([c for c in cats if c in TUNE])} / {bound([c for c in cats if c not in TUNE])} / "
                     f"{bound(cats)} | - | - | " + " | ".join(f"{100 * best[c]:.1f}" if c in best else "-"
                                                             for c in HARD) + " |")
    lines += ["", "Per category, image AUROC / pixel AUROC / PRO (percent):", "",
              "| category | half | " + " | ".join(rows) + " |", "|---" * (2 + len(rows)) + "|"]
    for c in cats:
        cells = [f"{100 * got[c]['image_auroc']:.1f} / {100 * got[c]['pixel_auroc']:.1f} / {100 * got[c]['pro']:.1f}"
                 + ("" if got[c].get("applied", True) else " (no mask)") if c in got else "-"
                 for got in rows.values()]
        lines.append(f"| {c} | {'TUNE' if c in TUNE else 'confirm'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _small(entry, n):
    """The first ``n // 2`` good and ``n - n // 2`` defective images of a cached category."""
    y = entry["labels"]
    keep = np.sort(np.r_[np.flatnonzero(y == 0)[: n // 2], np.flatnonzero(y == 1)[: n - n // 2]])
    return dict(entry, tokens=entry["tokens"].take(keep), labels=y[keep], masks=entry["masks"][keep],
                paths=[entry["paths"][i] for i in keep])


def smoke(cats=("bottle", "screw"), n=24):
    """Every step on a few images of two categories, nothing cached (a check that the study runs)."""
    for c in cats:
        entry = _small(load(c), n)
        compute_blocks(c, entry, pro=False, cache=False)
        X = LNAMDTransformer(device="cpu", aggregation="similarity").fit_transform(entry["tokens"])
        det = MutualScoringDetector(foreground="auto", progress=False, **MSM).fit(X)
        print(f"{c:11s} foreground applied {det.foreground_applied_} {det.foreground_stats_}")
        copies = X.features[::-1, :1]  # the batch in reverse order stands in for turned copies
        direct = mutual_scores(X.features[:, :1], [copies])
        tables = [best_similarity(X.features[:, :1], X.features[:, :1]), best_similarity(X.features[:, :1], copies)]
        diff = np.abs(direct - scores_from_similarity(tables, *X.features.shape[2:4])).max()
        print(f"{c:11s} orientation: tables against the direct kernel, max difference {diff:.1e}")
        assert diff < 1e-5, diff


def foreground_stats(cats):
    """The auto rule's statistics per category, for each block set of ``FOREGROUND_BLOCKS``."""
    head = " | ".join(f"blocks {','.join(map(str, b))}: within / border / masked (coverage)"
                      for b in FOREGROUND_BLOCKS)
    lines = [f"| category | half | {head} |", "|---" * (2 + len(FOREGROUND_BLOCKS)) + "|"]
    for c in cats:
        cells = []
        for blocks in FOREGROUND_BLOCKS:
            path = OUT / c / f"fg_{','.join(map(str, blocks))}.joblib"
            if not path.exists():
                cells.append("-")
                continue
            fg = joblib.load(path)
            cells.append(f"{fg['within_share']:.2f} / {fg['border_foreground']:.2f} / "
                         + (f"yes ({fg['coverage']:.2f})" if fg["applied"] else "no"))
        lines.append(f"| {c} | {'TUNE' if c in TUNE else 'confirm'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv and argv[0] == "--smoke":
        smoke()
        return
    what = argv[0] if argv else "compute"
    cats = argv[1:] or categories()
    if what == "compute":
        for c in cats:
            compute_blocks(c)
    elif what == "foreground":
        for c in cats:
            for blocks in FOREGROUND_BLOCKS:
                compute_foreground(c, blocks)
    elif what == "combined":
        # ACCURACY_COMBINED="orientation: turn 90;scale: 224 + 336": only these (default: all of COMBINED)
        chosen = os.environ.get("ACCURACY_COMBINED")
        names = chosen.split(";") if chosen else list(COMBINED)
        for c in cats:
            for name in names:
                compute_combined(c, name)
    elif what == "cost":
        cost(*(argv[1:2] or ["bottle"]))
    elif what == "table":
        print(table(cats))
        print()
        print(foreground_stats(cats))
    elif what == "image-score":
        image_score_variants(cats)
    elif what == "library":
        for c in cats:
            library(c)
    elif what == "check":
        check(*cats[:1])
    else:
        raise SystemExit(f"unknown command {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
