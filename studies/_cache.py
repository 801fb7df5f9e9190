"""Shared by the studies: ViT tokens of every shared MVTec AD category, computed once.

The studies compare settings that come after the backbone (LNAMD, MSM,
RsCIN, thresholds), so the tokens of each category (DINOv2 ViT-S/14 with the
shared weights at 224 px) are computed once and kept in ``$MUSC_CACHE``
(default ``/tmp/musc-cache``), next to the labels and the masks at the input
size. Nothing here is part of the package.

    python studies/_cache.py          # fills the cache for all 15 categories
"""

import os
import sys
from pathlib import Path

import joblib
import numpy as np

from sklearn_musc import ViTPatchTransformer, masks_to_input
from sklearn_musc.datasets import list_categories, load_masks, load_mvtec

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "mvtec_ad_lowres"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
CACHE = Path(os.environ.get("MUSC_CACHE", "/tmp/musc-cache"))
# Categories the studies choose settings on; the other 7 only confirm.
TUNE = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut")


def vit(image_size=224):
    return ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=str(WEIGHTS),
                               image_size=image_size, device="cpu", progress=False)


def categories():
    return list_categories(DATA)


def load(category):
    """dict(tokens=PatchTokens, labels, defect_types, masks (n, 224, 224) bool, paths)."""
    path = CACHE / f"{category}.joblib"
    if path.exists():
        return joblib.load(path)
    data = load_mvtec(DATA, category)
    model = vit().fit()
    tokens = model.transform(data.paths)
    entry = dict(tokens=tokens, labels=np.asarray(data.labels), defect_types=list(data.defect_types),
                 masks=masks_to_input(list(load_masks(data)), model.input_size_), paths=list(data.paths))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    joblib.dump(entry, tmp)
    tmp.replace(path)
    return entry


if __name__ == "__main__":
    for c in sys.argv[1:] or categories():
        e = load(c)
        print(c, e["tokens"].tokens.shape, flush=True)
