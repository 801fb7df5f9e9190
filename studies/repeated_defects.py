"""Study for issue #13: a defect repeated in 5-30 % of a batch, with and without ``repeat_ratio``.

Synthetic batches (``make_synthetic_defects(n_repeated=...)``): 60 images, a
"spot" copied pixel for pixel to the same place of 3, 6, 12 or 18 of them
(5, 10, 20, 30 %), plus 3 images with defects of their own; textures and
objects, seeds 0-2. DINOv2 ViT-S/14 with the shared weights at 224, default
LNAMD and MSM, with ``repeat_ratio`` None (plain MuSc), 0.3 and 0.5. Reported:
image AUROC of the repeated-defect images against the good ones (before
RsCIN) and of all defective images::

    python studies/repeated_defects.py
    REPEAT_TOPMIN=0.2 REPEAT_RATIOS=none python studies/repeated_defects.py   # one interval, plain only
    REPEAT_AGGREGATION=similarity ...                                           # MuSc-V2's SNAMD
"""

import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache import vit  # noqa: E402

from sklearn_musc import LNAMDTransformer, MutualScoringDetector  # noqa: E402
from sklearn_musc.datasets import make_synthetic_defects  # noqa: E402

N, UNIQUE = 60, 3
SHARES = (0.05, 0.1, 0.2, 0.3)
# repeat_ratio values (None: plain MuSc) and topmin intervals: the paper's 0.3 and the narrower ones
# studies/options.py measures; REPEAT_RATIOS="none;0.3", REPEAT_TOPMIN="0.2" choose others
RATIOS = tuple(None if r == "none" else float(r) for r in os.environ.get("REPEAT_RATIOS", "none;0.3;0.5").split(";"))
TOPMIN_MAX = tuple(float(t) for t in os.environ.get("REPEAT_TOPMIN", "0.3;0.1").split(";"))
AGGREGATION = os.environ.get("REPEAT_AGGREGATION", "mean")  # LNAMDTransformer(aggregation=...)


def batch(kind, share, seed):
    n_rep = int(round(share * N))
    return make_synthetic_defects(n_images=N, n_anomalous=n_rep + UNIQUE, n_repeated=n_rep, image_size=224,
                                  kind=kind, defects=("spot", "scratch", "missing"), random_state=seed)


def main():
    model = vit().fit()
    rows = {}
    for kind in ("texture", "object"):
        for share in SHARES:
            for seed in (0, 1, 2):
                data = batch(kind, share, seed)
                lnamd = LNAMDTransformer(device="cpu", aggregation=AGGREGATION)
                feats = lnamd.fit_transform(model.transform(list(data.images)))
                types = np.array(data.defect_types)
                rep, good = types == "spot-repeated", types == "good"
                for top in TOPMIN_MAX:
                    for ratio in RATIOS:
                        det = MutualScoringDetector(device="cpu", topmin_max=top, repeat_ratio=ratio)
                        s = det.fit(feats).anomaly_scores_
                        y_rep = np.r_[np.ones(rep.sum()), np.zeros(good.sum())]
                        auc_rep = roc_auc_score(y_rep, np.r_[s[rep], s[good]])
                        auc_all = roc_auc_score(data.labels, s)
                        rows.setdefault((kind, share, top, ratio), []).append((auc_rep, auc_all))
                print(kind, share, seed, {(t, r): np.round(rows[(kind, share, t, r)][-1], 3)
                                          for t in TOPMIN_MAX for r in RATIOS}, flush=True)
    for top in TOPMIN_MAX:
        head = " | ".join("plain MuSc" if r is None else f"repeat_ratio {r}" for r in RATIOS)
        print(f"\n{AGGREGATION} aggregation, topmin_max {top} (image AUROC: repeated / all)\n"
              f"| product | repeated share | {head} |\n"
              + "|---" * (2 + len(RATIOS)) + "|")
        for kind in ("texture", "object"):
            for share in SHARES:
                cells = [np.mean(rows[(kind, share, top, r)], axis=0) for r in RATIOS]
                print(f"| {kind} | {share:.0%} ({int(round(share * N))} of {N}) | "
                      + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
    else:
        main()
