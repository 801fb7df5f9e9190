"""Anomaly maps of one MVTec AD category, as a grid of overlays.

The whole category (all its test images) is scored as one batch, since MuSc's
images score each other; a dozen of them are then shown: a few good ones and
defective ones spread over the defect types, with the anomaly map on top (at
the image's own resolution, one colour scale for the whole batch), the
ground-truth defect outlined, and the final score and the ground-truth label
in the title (red: defective). The PNG is saved with a 256-colour palette to
keep it small.

    python examples/plot_anomaly_grid.py                       # bottle, from ../shared
    python examples/plot_anomaly_grid.py --category screw --out /tmp/screw_grid.png
    python examples/plot_anomaly_grid.py --n-scored 8 --n-images 4     # a quick run (the tests')

Without ``../shared`` and without ``--data-root`` it scores a synthetic batch
(``make_synthetic_defects``) instead, so that it always runs; without the
weights file the backbone is randomly initialised (the maps then show the
mechanics only).
"""

import argparse
import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sklearn_musc import make_musc_pipeline, maps_to_original  # noqa: E402
from sklearn_musc.datasets import load_masks, load_mvtec, make_synthetic_defects  # noqa: E402
from sklearn_musc.plotting import plot_anomaly_grid  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA_ROOT = SHARED / "data" / "mvtec_ad_lowres"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"


def pick(defect_types, n_images):
    """A quarter good images, the rest round-robin over the defect types; indices in batch order."""
    groups = {}
    for i, t in enumerate(defect_types):
        groups.setdefault(t, []).append(i)
    good = groups.pop("good", [])
    n_defective = min(n_images - n_images // 4, sum(map(len, groups.values())))
    n_good = min(len(good), n_images - n_defective)  # more good images when defective ones run out
    # evenly spaced good images, then the i-th image of every defect type in turn
    chosen = [good[j] for j in np.linspace(0, len(good) - 1, n_good).round().astype(int)] if n_good else []
    queues = [list(g) for g in groups.values()]
    while len(chosen) < n_images and any(queues):
        for q in queues:
            if q and len(chosen) < n_images:
                chosen.append(q.pop(0))
    return sorted(chosen)


def load_batch(args):
    """Images (paths or arrays), masks, labels (1 = defective), defect types and titles of the batch."""
    root = args.data_root or (DATA_ROOT if DATA_ROOT.is_dir() else None)
    if root is None:
        print(f"{DATA_ROOT} is absent: scoring a synthetic batch instead")
        data = make_synthetic_defects(n_images=16, n_anomalous=6, image_size=224, kind="object",
                                      random_state=0)
        titles = [f"{t} #{i}" for i, t in enumerate(data.defect_types)]
        return list(data.images), data.masks, data.labels, data.defect_types, titles
    bunch = load_mvtec(root, args.category)
    titles = [f"{t} {Path(p).stem}" for t, p in zip(bunch.defect_types, bunch.paths)]
    return bunch.paths, load_masks(bunch), bunch.labels, bunch.defect_types, titles


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=None, help=f"MVTec AD root (default {DATA_ROOT})")
    p.add_argument("--category", default="bottle")
    p.add_argument("--weights", type=Path, default=WEIGHTS, help="DINOv2 ViT-S/14 weights file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n-images", type=int, default=12, help="images shown (all are scored)")
    p.add_argument("--n-scored", type=int, default=None,
                   help="score only this many images of the category, picked like the shown ones, instead of "
                        "all of them: a quick run (each image then has fewer scorers)")
    p.add_argument("--n-cols", type=int, default=4)
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("anomaly_grid.png"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    images, masks, truth, defect_types, titles = load_batch(args)
    if args.n_scored is not None:
        keep = pick(defect_types, args.n_scored)
        images, titles, defect_types = ([seq[i] for i in keep] for seq in (images, titles, defect_types))
        masks, truth = masks[keep], truth[keep]
    if args.weights.is_file():
        pretrained = str(args.weights)
    else:
        print(f"{args.weights} is absent: the backbone is RANDOMLY INITIALISED")
        pretrained = None
    # the library's defaults with a small backbone (DINOv2 ViT-S/14), so that it runs on a CPU
    pipe = make_musc_pipeline(
        "default", vit__backbone="timm:vit_small_patch14_dinov2", vit__pretrained=pretrained,
        vit__image_size=args.image_size, vit__device=args.device, vit__progress=not args.no_progress,
        lnamd__device=args.device, msm__device=args.device,
    )
    start = time.perf_counter()
    pipe.fit_predict(images)  # the whole batch: its images score each other
    msm, rscin = pipe["msm"], pipe["rscin"]
    print(f"scored {len(images)} images ({int(truth.sum())} defective) in {time.perf_counter() - start:.1f} s; "
          f"{int((rscin.labels_ == -1).sum())} flagged as anomalous (contamination='auto')")

    shown = pick(defect_types, args.n_images)
    maps = maps_to_original(msm.anomaly_maps_[shown], [msm.original_sizes_[i] for i in shown],
                            msm.input_size_, crop_mode=msm.crop_mode_)
    fig = plot_anomaly_grid(
        [images[i] for i in shown], maps, masks=[masks[i] for i in shown],
        scores=rscin.anomaly_scores_[shown], labels=truth[shown],
        titles=[titles[i] for i in shown], n_cols=args.n_cols,
        # one colour scale for the whole scored batch, not only the images shown
        normalize=(float(msm.anomaly_maps_.min()), float(msm.anomaly_maps_.max())),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix.lower() == ".png":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=args.dpi)
        Image.open(buffer).convert("RGB").quantize(256).save(args.out, optimize=True)
    else:
        fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
