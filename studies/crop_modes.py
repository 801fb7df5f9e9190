"""Study for issue #23 (first part): how an elongated image is best fitted to a square input.

The shared MVTec AD images are nearly square; a line-scan strip or a tall part
is not. Strips of aspect 1:2 and 1:3 are made by putting ``k`` test images of
one category side by side (each 198 x 197 px):

* one strip per defective image (the first ``N_DEFECTIVE`` of the category,
  spread over its defect types), the defective image at one END of the strip
  (left and right in turn) beside ``k - 1`` good ones, so that its defect
  lies where a centre crop cuts;
* ``N_GOOD`` all-good strips.

The good images are drawn at random (seeded) from the category's good test
images, so one good image appears in several strips; the draws are the same
for every crop mode. Each strip set is scored by the default pipeline
(``make_musc_pipeline("default")``: SNAMD, MSM, RsCIN) on DINOv2 ViT-S/14 at
224 px with the shared weights, once for each crop mode:

* ``center``: resized to cover the input, centre-cropped (the paper's fit);
* ``border``: resized to fit, padded with the mean colour (letterbox);
* ``squash``: resized to the input, aspect ratio not kept.

Measured for each: image AUROC (after RsCIN), pixel AUROC at the strips'
own size (maps put back by ``maps_to_original``, so what a crop cut away
counts as unseen), the share of defective strips whose map peak lies on the
defect, and how many defective strips lose their defect entirely (no
defect-mask pixel inside the part of the strip the model sees) or in part.
``auto`` is not a mode of its own here: on these strips it is whichever of
border and squash it resolves to.

    python studies/crop_modes.py compute [category ...]  # cached per category in $MUSC_CROP_CACHE
    python studies/crop_modes.py table                    # markdown for benchmarks/RESULTS.md
"""

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _cache import DATA, WEIGHTS  # noqa: E402

from sklearn_musc import make_musc_pipeline, maps_to_original  # noqa: E402
from sklearn_musc.datasets import load_masks, load_mvtec  # noqa: E402
from sklearn_musc.geometry import CroppedImageWarning, crop_box  # noqa: E402
from sklearn_musc.images import read_rgb  # noqa: E402
from sklearn_musc.metrics import image_auroc, pixel_auroc  # noqa: E402

OUT = Path(os.environ.get("MUSC_CROP_CACHE", "/tmp/musc-crop-cache"))
TUNE = ("carpet", "hazelnut")  # the choice is made on these
CONFIRM = ("tile", "transistor")  # and checked on these
ASPECTS = (2, 3)
MODES = ("center", "border", "squash")
SEED = 0
N_DEFECTIVE, N_GOOD = 30, 20  # strips of each kind a category (2 CPU cores shared: kept small)


def make_strips(category, k, seed=SEED):
    """(strips, masks, labels) of one category: lists of (h, k * w, 3) uint8, (h, k * w) bool, 0/1."""
    data = load_mvtec(DATA, category)
    images = [read_rgb(p) for p in data.paths]
    masks = [m > 0 for m in load_masks(data)]
    labels = np.asarray(data.labels)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rng = np.random.default_rng(seed)
    strips, strip_masks, strip_labels = [], [], []
    bad = bad[np.round(np.linspace(0, len(bad) - 1, min(N_DEFECTIVE, len(bad)))).astype(int)]
    for j, b in enumerate(bad):
        tiles = list(rng.choice(good, size=k - 1, replace=False))
        tiles = [b] + tiles if j % 2 == 0 else tiles + [b]  # the defect at the left or the right end
        strips.append(np.concatenate([images[t] for t in tiles], axis=1))
        strip_masks.append(np.concatenate([masks[t] if t == b else np.zeros_like(masks[t]) for t in tiles],
                                          axis=1))
        strip_labels.append(1)
    for _ in range(N_GOOD):
        tiles = rng.choice(good, size=k, replace=False)
        strips.append(np.concatenate([images[t] for t in tiles], axis=1))
        strip_masks.append(np.zeros(strips[-1].shape[:2], dtype=bool))
        strip_labels.append(0)
    return strips, strip_masks, np.asarray(strip_labels)


def measure(strips, masks, labels, mode):
    """The numbers of one crop mode on one strip set."""
    pipe = make_musc_pipeline(
        "default", vit__backbone="timm:vit_small_patch14_dinov2", vit__pretrained=str(WEIGHTS),
        vit__image_size=224, vit__device="cpu", vit__progress=False, vit__crop_mode=mode,
        lnamd__device="cpu", lnamd__progress=False, msm__device="cpu", msm__progress=False)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CroppedImageWarning)
        tokens = pipe["vit"].fit().transform(strips)
    forward = time.perf_counter() - start
    scores = pipe["msm"].fit_transform(pipe["lnamd"].fit_transform(tokens))
    final = pipe["rscin"].fit(scores).anomaly_scores_
    maps = np.stack(maps_to_original(scores.anomaly_maps, scores.original_sizes, scores.input_size,
                                     crop_mode=scores.crop_mode))
    masks = np.stack(masks)
    defective = np.flatnonzero(labels == 1)
    lost = partly = 0
    for i in defective:
        y0, y1, x0, x1 = crop_box(masks[i].shape, scores.input_size, mode)
        seen = masks[i][y0:y1, x0:x1].sum()
        lost += int(seen == 0)
        partly += int(0 < seen < masks[i].sum())
    peaks = [masks[i].flat[int(maps[i].argmax())] for i in defective]
    return dict(
        image_auroc=float(image_auroc(labels, final)),
        image_auroc_msm=float(image_auroc(labels, scores.scores)),
        pixel_auroc=float(pixel_auroc(masks, maps)),
        peak_on_defect=float(np.mean(peaks)),
        defects_lost=lost, defects_partly_lost=partly, n_defective=int(len(defective)),
        n_strips=int(len(labels)), warnings=[str(w.message) for w in caught],
        forward_s=round(forward, 1),
    )


def compute(category):
    path = OUT / f"{category}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = {}
    for k in ASPECTS:
        strips, masks, labels = make_strips(category, k)
        for mode in MODES:
            got = measure(strips, masks, labels, mode)
            result[f"1:{k} {mode}"] = got
            print(category, f"1:{k}", mode, {key: v for key, v in got.items() if key != "warnings"}, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def table():
    rows = ["| category (half) | strips | mode | image AUROC | pixel AUROC | map peak on the defect | "
            "defects cut away entirely / in part |",
            "|---|---|---|---|---|---|---|"]
    means = {}
    for half, cats in (("TUNE", TUNE), ("confirm", CONFIRM)):
        for c in cats:
            path = OUT / f"{c}.json"
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            for key, got in result.items():
                aspect, mode = key.split()
                rows.append(f"| {c} ({half}) | {aspect}, {got['n_strips']} ({got['n_defective']} defective) | "
                            f"{mode} | {100 * got['image_auroc']:.1f} | {100 * got['pixel_auroc']:.1f} | "
                            f"{100 * got['peak_on_defect']:.1f} % | {got['defects_lost']} / "
                            f"{got['defects_partly_lost']} of {got['n_defective']} |")
                for name in ("image_auroc", "pixel_auroc", "peak_on_defect"):
                    means.setdefault((half, mode, name), []).append(got[name])
    rows += ["", "| half | mode | mean image AUROC | mean pixel AUROC | mean map peak on the defect |",
             "|---|---|---|---|---|"]
    for half in ("TUNE", "confirm"):
        for mode in MODES:
            cells = [means.get((half, mode, n)) for n in ("image_auroc", "pixel_auroc", "peak_on_defect")]
            if cells[0]:
                rows.append(f"| {half} | {mode} | " + " | ".join(f"{100 * np.mean(v):.1f}" for v in cells) + " |")
    print("\n".join(rows))


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1:2] == ["table"]:
        table()
    elif sys.argv[1:2] == ["compute"]:
        for c in sys.argv[2:] or TUNE + CONFIRM:
            compute(c)
    else:
        print(__doc__)
