"""Reproduce the paper's per-category table (docs/algorithm.rst, "Evaluation") on a dataset root.

Every category's test set is scored as one unlabeled batch by the whole
pipeline (ViT -> LNAMD -> MSM -> RsCIN); image metrics are taken on the final
RsCIN scores (plus the image AUROC of the MSM scores before RsCIN), pixel
metrics on the MSM maps against the masks resized and cropped like the images.

    # the paper's setting (open_clip ViT-L-14-336, "openai" weights, 518 px), on a GPU
    python reproduction/reproduce.py --dataset mvtec --data-root /data/mvtec_ad --out /tmp/musc-mvtec
    # a small CPU run with the shared DINOv2 ViT-S/14 weights (--preset default: the library's defaults)
    python reproduction/reproduce.py --dataset mvtec --data-root ../shared/data/mvtec_ad_lowres \\
        --backbone timm:vit_small_patch14_dinov2 \\
        --weights ../shared/weights/dinov2_vits14_imgfocus_fp16.safetensors \\
        --image-size 224 --device cpu --categories bottle toothbrush --out /tmp/musc-lowres

One category at a time; each finished category is stored in
``OUT/categories/<name>.json`` with its metrics and settings, and a rerun skips
the categories already done with the same settings (device, batch size and
progress bar are not settings: they do not change the results). Then
``OUT/results.csv`` (fractions) and ``OUT/results.md`` (percent) are written
for the requested categories, with their mean.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from sklearn_musc import make_musc_pipeline, masks_to_input
from sklearn_musc.datasets import list_categories, load_btad, load_masks, load_mvtec, load_visa
from sklearn_musc.metrics import evaluate, image_auroc
from sklearn_musc.presets import PRESETS, pretrained_from_options, resolve_weights

LOADERS = {"mvtec": load_mvtec, "visa": load_visa, "btad": load_btad}
COLUMNS = ["image_auroc", "image_f1max", "image_ap", "pixel_auroc", "pixel_f1max", "pixel_ap", "pro",
           "image_auroc_msm"]
HEADERS = ["image AUROC", "image F1-max", "image AP", "pixel AUROC", "pixel F1-max", "pixel AP", "PRO",
           "image AUROC (MSM)"]

# Published MuSc means (the paper; ViT-L-14-336 "openai", 518 px, r = 1,3,5, topmin_max = 0.3),
# in percent. Only the means: the per-category numbers (the paper's Tables 17, 18) are not
# available here, and none are published here for BTAD.
PAPER_MEANS = {
    "mvtec": dict(image_auroc=97.8, image_f1max=97.5, image_ap=99.1,
                  pixel_auroc=97.3, pixel_f1max=62.6, pixel_ap=62.7, pro=93.8),
    "visa": dict(image_auroc=92.8, image_f1max=89.5, image_ap=93.5,
                 pixel_auroc=98.8, pixel_f1max=48.8, pixel_ap=45.1, pro=92.7),
}


def preset_name(dataset, preset="paper"):
    """The sklearn_musc preset of ``--preset``: the paper's for the dataset, or the library's defaults."""
    return f"paper-{dataset}" if preset == "paper" else "default"


def preset_of(dataset, preset="paper"):
    """The settings of ``--preset`` on ``dataset`` (sklearn_musc.presets)."""
    return PRESETS[preset_name(dataset, preset)]


# option -> the preset's parameter that is its default
PRESET_DEFAULTS = {"backbone": "vit__backbone", "image_size": "vit__image_size", "r_list": "lnamd__r_list",
                   "k_list": "rscin__k_list", "topmin_max": "msm__topmin_max"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(LOADERS), default="mvtec")
    p.add_argument("--preset", choices=("paper", "default"), default="paper",
                   help="paper: the paper's settings for --dataset (default); default: the library's defaults "
                        "(topmin_max 0.2, RsCIN on the salient feature with k = 1, 7)")
    p.add_argument("--data-root", required=True, help="the dataset root (one folder per category)")
    p.add_argument("--backbone", default=None, help="open_clip:NAME or timm:NAME (default: the paper's)")
    p.add_argument("--pretrained", default=None,
                   help="pretrained tag (default: the backbone's own), or 'none' for random weights")
    p.add_argument("--weights", default=None, help="local weights file; overrides --pretrained")
    p.add_argument("--image-size", type=int, default=None, help="default: the paper's (518)")
    p.add_argument("--r-list", type=int, nargs="+", default=None, help="LNAMD degrees (default 1 3 5)")
    p.add_argument("--k-list", type=int, nargs="+", default=None,
                   help="RsCIN windows (default: the preset's; paper: 1 2 3 for mvtec and btad, 1 8 9 for visa)")
    p.add_argument("--topmin-max", type=float, default=None, help="default: the preset's (paper 0.3)")
    p.add_argument("--max-subset-size", type=int, default=None, help="MSM subsets of at most this size")
    p.add_argument("--n-subsets", type=int, default=1, help="MSM subsets (default 1: the whole batch)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--categories", nargs="+", default=None, help="default: all under --data-root")
    p.add_argument("--out", required=True, help="folder for results.csv, results.md and categories/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backbone-kwargs", type=json.loads, default=None,
                   help='advanced: JSON architecture overrides, e.g. \'{"depth": 4}\' (for tests)')
    args = p.parse_args(argv)
    preset = preset_of(args.dataset, args.preset)
    for option, param in PRESET_DEFAULTS.items():
        if getattr(args, option) is None:
            value = preset[param]
            setattr(args, option, list(value) if isinstance(value, tuple) else value)
    return args


def pretrained_arg(args):
    """The ViTPatchTransformer ``pretrained`` value: a file, a tag, True (the default) or None."""
    return pretrained_from_options(args.pretrained, args.weights)


def settings_of(args):
    """Everything that changes the numbers; a stored category is reused only if these match."""
    backbone, kind, value = resolve_weights(args.backbone, pretrained_arg(args))
    if kind == "file":
        weights = f"file {value} ({value.stat().st_size} bytes)"
    elif kind == "tag":
        weights = "default tag" if value is True else f"tag {value}"
    else:
        weights = "random init (seed 0)"
    return dict(
        dataset=args.dataset, preset=preset_name(args.dataset, args.preset),
        data_root=str(Path(args.data_root).resolve()),
        backbone=backbone, weights=weights, backbone_kwargs=args.backbone_kwargs,
        image_size=args.image_size, r_list=list(args.r_list), k_list=list(args.k_list),
        topmin_max=args.topmin_max, max_subset_size=args.max_subset_size, n_subsets=args.n_subsets,
    )


def is_paper_setting(s):
    """Whether the settings are the paper's preset for a dataset with published means."""
    if s["dataset"] not in PAPER_MEANS:
        return False
    paper = preset_of(s["dataset"])
    return (s.get("preset") == preset_name(s["dataset"])
            and s["backbone"] == paper["vit__backbone"] and s["weights"] == f"tag {paper['vit__pretrained']}"
            and s["backbone_kwargs"] is None and s["image_size"] == paper["vit__image_size"]
            and s["r_list"] == list(paper["lnamd__r_list"]) and s["k_list"] == list(paper["rscin__k_list"])
            and s["topmin_max"] == paper["msm__topmin_max"] and s["max_subset_size"] is None
            and s["n_subsets"] == 1)


def build_pipeline(args):
    """The preset of ``--preset`` (the dataset's paper preset by default) with the command-line options."""
    return make_musc_pipeline(
        preset_name(args.dataset, args.preset),
        vit__backbone=args.backbone, vit__pretrained=pretrained_arg(args), vit__image_size=args.image_size,
        vit__backbone_kwargs=args.backbone_kwargs, vit__device=args.device, vit__batch_size=args.batch_size,
        vit__progress=not args.no_progress,
        lnamd__r_list=tuple(args.r_list), lnamd__device=args.device,
        msm__topmin_max=args.topmin_max, msm__n_subsets=args.n_subsets,
        msm__max_subset_size=args.max_subset_size, msm__device=args.device,
        rscin__k_list=tuple(args.k_list),
    )


def masks_at_input(bunch, input_size):
    """Each ground-truth mask at its image's size (sizes may differ), resized + cropped like the image."""
    masks = [load_masks({"paths": [path], "mask_paths": [mask]})[0]
             for path, mask in zip(bunch.paths, bunch.mask_paths)]
    return masks_to_input(masks, input_size)


def run_category(args, category):
    """Score one category as one batch; its metrics (fractions) and timings."""
    bunch = LOADERS[args.dataset](args.data_root, category)
    start = time.perf_counter()
    pipe = build_pipeline(args)
    pipe.fit_predict(bunch.paths)
    pipeline_seconds = time.perf_counter() - start
    msm, rscin = pipe["msm"], pipe["rscin"]
    masks = masks_at_input(bunch, pipe["vit"].input_size_)
    metrics = evaluate(bunch.labels, rscin.anomaly_scores_, masks, msm.anomaly_maps_)
    metrics["image_auroc_msm"] = image_auroc(bunch.labels, msm.anomaly_scores_)
    return dict(
        category=category, metrics={k: float(metrics[k]) for k in COLUMNS},
        n_images=len(bunch.paths), n_anomalous=int(bunch.labels.sum()),
        pipeline_seconds=round(pipeline_seconds, 2), seconds=round(time.perf_counter() - start, 2),
        device=str(pipe["vit"].device_), date=datetime.datetime.now().isoformat(timespec="seconds"),
    )


def load_done(path, settings):
    """The stored result of a category, if it was computed with these settings."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None
    return stored if stored.get("settings") == settings else None


def write_csv(results, path):
    lines = [",".join(["category"] + COLUMNS)]
    for r in results:
        lines.append(",".join([r["category"]] + [f"{r['metrics'][c]:.6f}" for c in COLUMNS]))
    mean = {c: np.mean([r["metrics"][c] for r in results]) for c in COLUMNS}
    lines.append(",".join(["mean"] + [f"{mean[c]:.6f}" for c in COLUMNS]))
    path.write_text("\n".join(lines) + "\n")
    return mean


def write_markdown(results, mean, settings, device, path):
    s = settings
    subsets = ("none" if s["max_subset_size"] is None and s["n_subsets"] == 1
               else f"n_subsets={s['n_subsets']}, max_subset_size={s['max_subset_size']}")
    total = sum(r["seconds"] for r in results)
    n_images = sum(r["n_images"] for r in results)
    lines = [
        f"# MuSc on {s['dataset']}: {len(results)} categories, {n_images} test images",
        "",
        f"- preset: `{s['preset']}`; data root: `{s['data_root']}`",
        f"- backbone: `{s['backbone']}`" + (f" with `{s['backbone_kwargs']}`" if s["backbone_kwargs"] else ""),
        f"- weights: {s['weights']}",
        f"- image size: {s['image_size']}; r_list: {s['r_list']}; k_list: {s['k_list']}; "
        f"topmin_max: {s['topmin_max']}; subsets: {subsets}",
        f"- device: {device}; date: {datetime.date.today().isoformat()}; "
        f"total time: {total:.0f} s ({total / max(n_images, 1):.2f} s per image, pipeline and metrics)",
        "",
        "Percent. Image metrics on the final scores (after RsCIN); image AUROC (MSM) on the scores "
        "before RsCIN; pixel metrics on the anomaly maps at the model input size.",
        "",
        "| category | " + " | ".join(HEADERS) + " |",
        "|---" * (len(HEADERS) + 1) + "|",
    ]

    def row(name, values):
        cells = ["–" if values.get(c) is None else f"{100 * values[c]:.1f}" for c in COLUMNS]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines += [row(r["category"], r["metrics"]) for r in results]
    lines.append(row("**mean**", mean))
    if is_paper_setting(s):
        lines.append(row("paper (mean)", {k: v / 100 for k, v in PAPER_MEANS[s["dataset"]].items()}))
        lines += ["", "The paper row holds the published means; its per-category "
                  "numbers (Tables 17, 18) are not available here."]
    else:
        lines += ["", "The setting differs from the paper's (open_clip ViT-L-14-336 with `openai` weights "
                  "at 518 px, r_list 1,3,5, the reference k_list, topmin_max 0.3, no subsets, on MVTec AD "
                  "or VisA), so no paper numbers are shown."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    settings = settings_of(args)
    categories = args.categories or list_categories(args.data_root, args.dataset)
    out = Path(args.out)
    (out / "categories").mkdir(parents=True, exist_ok=True)
    print(f"{settings['dataset']}: {len(categories)} categories, {settings['backbone']} ({settings['weights']}), "
          f"{settings['image_size']} px -> {out}", flush=True)
    results = []
    for i, category in enumerate(categories, 1):
        path = out / "categories" / f"{category}.json"
        result = load_done(path, settings)
        if result is None:
            result = run_category(args, category)
            result["settings"] = settings
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(path)  # only complete results are ever found by a rerun
            status = f"{result['seconds']:.1f} s"
        else:
            status = f"skipped: done with the same settings ({result['seconds']:.1f} s then)"
        m = result["metrics"]
        print(f"[{i}/{len(categories)}] {category}: {result['n_images']} images, image AUROC/F1/AP "
              f"{100 * m['image_auroc']:.1f}/{100 * m['image_f1max']:.1f}/{100 * m['image_ap']:.1f} "
              f"(MSM {100 * m['image_auroc_msm']:.1f}), pixel AUROC/F1/AP/PRO {100 * m['pixel_auroc']:.1f}/"
              f"{100 * m['pixel_f1max']:.1f}/{100 * m['pixel_ap']:.1f}/{100 * m['pro']:.1f}; {status}",
              flush=True)
        results.append(result)
    mean = write_csv(results, out / "results.csv")
    device = ", ".join(sorted({r["device"] for r in results}))
    write_markdown(results, mean, settings, device, out / "results.md")
    print(f"mean image AUROC {100 * mean['image_auroc']:.1f}, pixel AUROC {100 * mean['pixel_auroc']:.1f}; "
          f"wrote {out / 'results.csv'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
