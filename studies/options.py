"""Study for issue #13: the library's options on the shared MVTec AD, chosen on 8 categories.

DINOv2 ViT-S/14 at 224 (tokens from ``_cache.py``). For every category and
every setting of the steps after the backbone, image AUROC before and after
each RsCIN variant, pixel AUROC and PRO are kept in ``$MUSC_OPTIONS_CACHE``
(default ``/tmp/musc-options-cache``)::

    python studies/options.py compute [category ...]   # MSM of every setting (cached)
    python studies/options.py table                    # means on TUNE / the other 7 / all

Settings: LNAMD ("mean") or SNAMD ("similarity") aggregation, the topmin
interval, the repeated-defect filter (``repeat_ratio``), subsets of the four
cached layers (blocks 2, 5, 8, 11); RsCIN with the class token or the salient
patch feature, windows (1, 2, 3) and (1, 7). Every setting is written out
(nothing relies on the estimators' defaults, which this study chose). Every
setting runs ``MutualScoringDetector.fit`` as users do, its products
included (an earlier version shared them between the settings of one
aggregation by replacing a private kernel at run time); the seconds recorded
are the study's, ``benchmarks/`` times.
"""

import dataclasses
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
from sklearn_musc.metrics import evaluate  # noqa: E402

OUT = Path(os.environ.get("MUSC_OPTIONS_CACHE", "/tmp/musc-options-cache"))
# name -> (LNAMD params, MSM params)
SETTINGS = {
    "lnamd t0.3 (paper)": (dict(aggregation="mean"), dict(topmin_max=0.3)),
    "lnamd t0.1": (dict(aggregation="mean"), dict(topmin_max=0.1)),
    "lnamd t0.5": (dict(aggregation="mean"), dict(topmin_max=0.5)),
    "lnamd t0.3 repeat0.3": (dict(aggregation="mean"), dict(topmin_max=0.3, repeat_ratio=0.3)),
    "lnamd t0.3 repeat0.5": (dict(aggregation="mean"), dict(topmin_max=0.3, repeat_ratio=0.5)),
    "lnamd t0.1 repeat0.3": (dict(aggregation="mean"), dict(topmin_max=0.1, repeat_ratio=0.3)),
    "snamd t0.3": (dict(aggregation="similarity"), dict(topmin_max=0.3)),
    "lnamd t0.2": (dict(aggregation="mean"), dict(topmin_max=0.2)),
    "snamd t0.2": (dict(aggregation="similarity"), dict(topmin_max=0.2)),
    "snamd t0.2 repeat0.3": (dict(aggregation="similarity"), dict(topmin_max=0.2, repeat_ratio=0.3)),
    # layer subsets of the cached blocks (2, 5, 8, 11): "layers" picks them before LNAMD
    "snamd t0.2 layers 5,8,11": (dict(aggregation="similarity", layers=(5, 8, 11)), dict(topmin_max=0.2)),
    "snamd t0.2 layers 2,5,8": (dict(aggregation="similarity", layers=(2, 5, 8)), dict(topmin_max=0.2)),
    "snamd t0.2 layers 8,11": (dict(aggregation="similarity", layers=(8, 11)), dict(topmin_max=0.2)),
}


RSCIN = {
    "none": None,
    "class k123 (paper)": dict(embedding="image", k_list=(1, 2, 3)),
    "class k17": dict(embedding="image", k_list=(1, 7)),
    "salient k17 (V2)": dict(embedding="salient", k_list=(1, 7)),
    "salient k123": dict(embedding="salient", k_list=(1, 2, 3)),
}


_FEATURES = {}


def features(category, lnamd_params):
    key = (category, tuple(sorted(lnamd_params.items())))
    if key not in _FEATURES:
        _FEATURES.clear()
        params = dict(lnamd_params)
        tokens = load(category)["tokens"]
        layers = params.pop("layers", None)
        if layers is not None:  # a subset of the cached blocks
            keep = [tokens.layers.index(b) for b in layers]
            tokens = dataclasses.replace(tokens, tokens=tokens.tokens[:, keep], layers=tuple(layers))
        _FEATURES[key] = LNAMDTransformer(device="cpu", **params).fit_transform(tokens)
    return _FEATURES[key]


def compute(category, setting):
    path = OUT / category / f"{setting.replace(' ', '_')}.joblib"
    if path.exists():
        return joblib.load(path)
    entry = load(category)
    lnamd_params, msm_params = SETTINGS[setting]
    y, masks = entry["labels"], entry["masks"]
    t0 = time.perf_counter()
    feats = features(category, lnamd_params)
    det = MutualScoringDetector(device="cpu", **msm_params)
    scores = det.fit_transform(feats)
    seconds = time.perf_counter() - t0
    result = dict(seconds=seconds)
    pix = evaluate(y, scores.scores, masks, scores.anomaly_maps)
    result["pixel_auroc"], result["pro"] = pix["pixel_auroc"], pix["pro"]
    for name, params in RSCIN.items():
        final = scores.scores if params is None else RsCINRescorer(**params).fit(scores).anomaly_scores_
        result[name] = evaluate(y, final)["image_auroc"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(result, tmp)
    tmp.replace(path)
    print(f"{category:11s} {setting:20s} {seconds:6.1f}s img {result['class k123 (paper)']:.3f} "
          f"pix {result['pixel_auroc']:.3f} pro {result['pro']:.3f}", flush=True)
    return result


def table(cats):
    lines = ["| LNAMD / MSM setting | RsCIN | categories measured | image AUROC: TUNE / confirm / all "
             "| pixel AUROC (all) | PRO (all) |", "|---|---|---|---|---|---|"]
    for setting in SETTINGS:  # each over the categories it was computed on (``compute`` may be partial)
        have = [c for c in cats if (OUT / c / f"{setting.replace(' ', '_')}.joblib").exists()]
        if not have:
            continue
        got = {c: compute(c, setting) for c in have}
        halves = (("TUNE", [c for c in have if c in TUNE]), ("confirm", [c for c in have if c not in TUNE]),
                  ("all", have))
        for name in RSCIN:
            img = [f"{100 * np.mean([got[c][name] for c in part]):.1f}" if part else "-" for _, part in halves]
            lines.append(f"| {setting} | {name} | {len(halves[0][1])} + {len(halves[2][1]) - len(halves[0][1])} "
                         f"| {img[0]} / {img[1]} / {img[2]} "
                         f"| {100 * np.mean([got[c]['pixel_auroc'] for c in have]):.1f} "
                         f"| {100 * np.mean([got[c]['pro'] for c in have]):.1f} |")
    return "\n".join(lines)


def per_category(cats, configs):
    """Per-category rows for (setting, RsCIN variant) configurations: image AUROC, pixel AUROC, PRO."""
    head = " | ".join(f"{s} + {r}: image / pixel / PRO" for s, r in configs)
    lines = [f"| category | half | {head} |", "|---" * (2 + len(configs)) + "|"]
    for c in cats:
        if not all((OUT / c / f"{s.replace(' ', '_')}.joblib").exists() for s, _ in configs):
            continue
        cells = []
        for setting, rscin in configs:
            got = compute(c, setting)
            cells.append(f"{100 * got[rscin]:.1f} / {100 * got['pixel_auroc']:.1f} / {100 * got['pro']:.1f}")
        lines.append(f"| {c} | {'tune' if c in TUNE else 'confirm'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    what = argv[0] if argv else "compute"
    cats = argv[1:] or categories()
    if what == "compute":
        # OPTIONS_SETTINGS="lnamd t0.3 (paper);lnamd t0.1": only these settings (the others later)
        chosen = os.environ.get("OPTIONS_SETTINGS")
        settings = chosen.split(";") if chosen else list(SETTINGS)
        for c in cats:  # category-major: the settings of one aggregation share the tables
            for setting in settings:
                compute(c, setting)
    elif what == "table":
        print(table(cats))
        # OPTIONS_COMPARE="lnamd t0.3 (paper)|class k123 (paper);lnamd t0.1|salient k17 (V2)"
        if os.environ.get("OPTIONS_COMPARE"):
            configs = [tuple(pair.split("|")) for pair in os.environ["OPTIONS_COMPARE"].split(";")]
            print(per_category(cats, configs))
    else:
        raise SystemExit(f"unknown command {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
