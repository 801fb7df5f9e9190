"""A novelty pool stored in float16 against float32: scores, AUROC, saved size.

For each category, a random 70 % of the test images (seeded) is the pool of
a ``MutualScoringDetector(novelty=True)`` behind ``LNAMDTransformer(dtype=...)``,
and the other 30 % are scored as new images. Printed per category: the
largest difference of the new images' scores between the two dtypes, both
image AUROCs, and the size of the fitted detector saved with joblib.

    python studies/pool_dtype.py bottle screw carpet
"""

import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np

from _cache import load
from sklearn_musc import LNAMDTransformer, MutualScoringDetector
from sklearn_musc.metrics import image_auroc


def main(names):
    if names and names[0] in ("-h", "--help"):
        print(__doc__)
        return
    print("| category | pool N | max abs score diff | AUROC float32 | AUROC float16 | saved MiB float32 | "
          "saved MiB float16 |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        entry = load(name)
        n = len(entry["labels"])
        order = np.random.default_rng(0).permutation(n)
        pool, new = order[: int(0.7 * n)], order[int(0.7 * n):]
        row = {}
        for dtype in ("float32", "float16"):
            feats = LNAMDTransformer(device="cpu", dtype=dtype).fit_transform(entry["tokens"])
            det = MutualScoringDetector(novelty=True, device="cpu").fit(feats.take(pool))
            scores = -det.score_samples(feats.take(new))
            with tempfile.TemporaryDirectory() as tmp:
                joblib.dump(det, Path(tmp) / "m.joblib")
                size = (Path(tmp) / "m.joblib").stat().st_size / 2**20
            row[dtype] = (scores, image_auroc(entry["labels"][new], scores), size)
        diff = np.abs(row["float32"][0] - row["float16"][0]).max()
        print(f"| {name} | {len(pool)} | {diff:.1e} | {row['float32'][1]:.4f} | {row['float16'][1]:.4f} | "
              f"{row['float32'][2]:.0f} | {row['float16'][2]:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["bottle", "screw", "carpet"])
