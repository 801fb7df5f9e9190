"""``sklearn-musc demo``: a synthetic batch with planted defects, scored and checked against them."""

import sys
from pathlib import Path

import numpy as np

from ..features import ViTPatchTransformer
from ..geometry import maps_to_original
from .errors import WeightsUnavailable
from .options import check_options, pretrained
from .run import load_backbone, run_score

DEMO_BACKBONE = "timm:vit_small_patch14_dinov2.lvd142m"


def _demo_pretrained(args):
    """Weights for the demo: a file, else the pretrained tag, else random init (with a warning)."""
    tag = pretrained(args)
    if tag is None or args.weights is not None:
        return tag
    try:
        load_backbone(ViTPatchTransformer(backbone=args.backbone, pretrained=tag,
                                          image_size=args.image_size, device="cpu", progress=False))
        return tag
    except WeightsUnavailable as exc:  # no network and nothing cached
        print(
            f"warning: could not load pretrained weights for {args.backbone} ({exc.__cause__.__class__.__name__}: "
            "no network and nothing cached?); running the demo with a RANDOMLY INITIALISED backbone, "
            "so the maps show the mechanics only. Give a weights file with --weights FILE.",
            file=sys.stderr,
        )
        return None


def run_demo(args):
    from ..datasets import load_masks, load_mvtec, make_synthetic_defects, save_synthetic_defects

    out = Path(args.out)
    args.overwrite = True  # the demo folder is the demo's own: each run replaces it
    check_options(args)
    data = make_synthetic_defects(n_images=16, n_anomalous=4, image_size=224, kind="object", random_state=0)
    saved = save_synthetic_defects(out / "images", data=data, overwrite=True)
    print(f"demo batch: {len(data.labels)} synthetic images, {int(data.labels.sum())} with defects "
          f"(scratch, spot, missing part), in {out / 'images'}")
    results = run_score(args, out / "images" / "test", _demo_pretrained(args))
    truth = load_mvtec(saved.root, saved.category)
    _print_demo_check(results, truth, load_masks(truth))


def _print_demo_check(results, truth, masks):
    """Compare with the planted defects: image and pixel AUROC, hits and false alarms."""
    from sklearn.metrics import roc_auc_score

    index = {Path(p).resolve(): i for i, p in enumerate(truth.paths)}
    order = [index[p.resolve()] for p in results.paths]
    labels, masks = truth.labels[order], masks[order]
    maps = np.stack(maps_to_original(results.anomaly_maps, [m.shape for m in masks], results.input_size,
                                     crop_mode=results.crop_mode))
    found = results.labels == -1
    print(f"check against the planted defects: image AUROC {roc_auc_score(labels, results.scores):.3f}, "
          f"pixel AUROC {roc_auc_score(masks.ravel(), maps.ravel()):.3f}; "
          f"{int((found & (labels == 1)).sum())} of {int(labels.sum())} defective images flagged, "
          f"{int((found & (labels == 0)).sum())} false alarms")
