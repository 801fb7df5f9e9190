"""Command line: ``sklearn-musc score DIR --out OUT`` and ``sklearn-musc demo``."""

import argparse
import contextlib
import csv
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.pipeline import Pipeline

from . import LNAMDTransformer, MutualScoringDetector, RsCINRescorer, ViTPatchTransformer
from ._images import load_image
from .features import maps_to_original

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
DEMO_BACKBONE = "timm:vit_small_patch14_dinov2.lvd142m"


def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")


def _contamination(text):
    return text if text == "auto" else float(text)


def _add_model_options(parser, *, backbone, image_size):
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=backbone, help=f"open_clip:NAME or timm:NAME (default {backbone})")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag (downloaded once into the library's cache; default: the backbone's "
                        "own), or 'none' for random weights")
    g.add_argument("--weights", type=Path, default=None, help="local weights file (offline); overrides --pretrained")
    g.add_argument("--image-size", type=_image_size, default=image_size, help="N or HxW (default %(default)s)")
    g.add_argument("--layers", type=int, nargs="+", default=None, help="0-based blocks (default: 4 stage ends)")
    g.add_argument("--r-list", type=int, nargs="+", default=[1, 3, 5], help="LNAMD degrees")
    g.add_argument("--k-list", type=int, nargs="+", default=[1, 2, 3], help="RsCIN windows")
    g.add_argument("--contamination", type=_contamination, default="auto", help="'auto' or a share in (0, 0.5]")
    g.add_argument("--max-subset-size", type=int, default=None, help="score random subsets of at most this size")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-overlays", action="store_true", help="do not write heat-map PNGs")


def build_pipeline(args, pretrained):
    """The MuSc pipeline from the command-line options."""
    return Pipeline([
        ("vit", ViTPatchTransformer(
            backbone=args.backbone, pretrained=pretrained, image_size=args.image_size,
            layers=args.layers, device=args.device, batch_size=args.batch_size,
            progress=not args.no_progress, random_state=0)),
        ("lnamd", LNAMDTransformer(r_list=tuple(args.r_list), device=args.device)),
        ("msm", MutualScoringDetector(contamination=args.contamination, device=args.device,
                                      max_subset_size=args.max_subset_size, random_state=0)),
        ("rscin", RsCINRescorer(k_list=tuple(args.k_list), contamination=args.contamination)),
    ])


def find_images(directory):
    """Every image file under ``directory``, sorted; an error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SystemExit(f"error: {directory} is not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) < 2:
        raise SystemExit(f"error: found {len(paths)} image(s) under {directory}; mutual scoring needs 2 or more")
    return paths


def _overlay(image, amap, vmin, vmax):
    from .plotting import anomaly_map_rgb

    return anomaly_map_rgb(image, amap, vmin=vmin, vmax=vmax)


def write_results(pipe, paths, root, out):
    """scores.csv (path, score, label, msm_score) and heat-map overlays."""
    out.mkdir(parents=True, exist_ok=True)
    msm, rscin = pipe["msm"], pipe["rscin"]
    rel = [str(p.relative_to(root)) for p in paths]
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "label", "msm_score"])
        for name, score, label, raw in zip(rel, rscin.anomaly_scores_, rscin.labels_, msm.anomaly_scores_):
            writer.writerow([name, f"{score:.6f}", "anomalous" if label == -1 else "normal", f"{raw:.6f}"])
    return out / "scores.csv"


def write_overlays(pipe, paths, root, out):
    """One PNG per image: its anomaly map at the original resolution on top of it.

    The colour scale is shared by the batch, so that colours compare across images.
    """
    msm = pipe["msm"]
    vit = pipe["vit"]
    vmin, vmax = float(msm.anomaly_maps_.min()), float(msm.anomaly_maps_.max())
    for i, path in enumerate(paths):
        image, size = load_image(str(path), str(path))
        amap = maps_to_original(msm.anomaly_maps_[i : i + 1], [size], vit.input_size_)[0]
        target = out / "overlays" / path.relative_to(root).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_overlay(np.asarray(image), amap, vmin, vmax)).save(target)
    return out / "overlays"


def print_summary(pipe, paths, root, seconds, stream=None):
    stream = stream or sys.stdout
    rscin = pipe["rscin"]
    n = len(paths)
    flagged = int((rscin.labels_ == -1).sum())
    print(f"scored {n} images in {seconds:.1f} s: {flagged} anomalous, {n - flagged} normal "
          f"(threshold {rscin.threshold_:.3f} on scores in [0, 1])", file=stream)
    if rscin.contamination == "auto":
        print("  (contamination 'auto' assumes fewer than half of the images are defective; "
              "if more are, give the expected share with --contamination)", file=stream)
    order = np.argsort(-rscin.anomaly_scores_)
    print("most anomalous:", file=stream)
    for i in order[: min(5, n)]:
        verdict = "anomalous" if rscin.labels_[i] == -1 else "normal"
        print(f"  {rscin.anomaly_scores_[i]:.3f}  {verdict:9s}  {paths[i].relative_to(root)}", file=stream)


def _pretrained(args):
    """--weights FILE, else --pretrained TAG ('none': random init), else the backbone's default tag."""
    if args.weights is not None:
        return str(args.weights)
    if args.pretrained is None:
        return True
    return None if args.pretrained.lower() == "none" else args.pretrained


def run_score(args, directory, pretrained):
    root = Path(directory)
    paths = find_images(root)
    pipe = build_pipeline(args, pretrained)
    start = time.perf_counter()
    pipe.fit_predict([str(p) for p in paths])
    seconds = time.perf_counter() - start
    out = Path(args.out)
    csv_path = write_results(pipe, paths, root, out)
    print_summary(pipe, paths, root, seconds)
    print(f"wrote {csv_path}")
    if not args.no_overlays:
        print(f"wrote {write_overlays(pipe, paths, root, out)}/")
    return pipe, paths


def _hub_reachable(host="huggingface.co", timeout=5.0):
    def lookup():
        socket.getaddrinfo(host, 443)

    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(lookup).result(timeout=timeout)
            return True
        except (OSError, FutureTimeout):
            return False


@contextlib.contextmanager
def _offline_unless_reachable():
    """Without network, read the hub's cache only: fail at once instead of retrying for a minute."""
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = previous or not _hub_reachable()
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def _demo_pretrained(args):
    """Weights for the demo: a file, else the pretrained tag, else random init (with a warning)."""
    pretrained = _pretrained(args)
    if pretrained is None or args.weights is not None:
        return pretrained
    try:
        with _offline_unless_reachable():
            ViTPatchTransformer(backbone=args.backbone, pretrained=pretrained, image_size=args.image_size,
                                device="cpu", progress=False).fit()
        return pretrained
    except Exception as exc:  # no network and nothing cached
        print(
            f"warning: could not load pretrained weights for {args.backbone} ({type(exc).__name__}: "
            "no network and nothing cached?); running the demo with a RANDOMLY INITIALISED backbone, "
            "so the maps show the mechanics only. Give a weights file with --weights FILE.",
            file=sys.stderr,
        )
        return None


def run_demo(args):
    from .datasets import load_masks, load_mvtec, make_synthetic_defects, save_synthetic_defects

    out = Path(args.out)
    data = make_synthetic_defects(n_images=16, n_anomalous=4, image_size=224, kind="object", random_state=0)
    saved = save_synthetic_defects(out / "images", data=data, overwrite=True)
    print(f"demo batch: {len(data.labels)} synthetic images, {int(data.labels.sum())} with defects "
          f"(scratch, spot, missing part), in {out / 'images'}")
    pipe, paths = run_score(args, out / "images" / "test", _demo_pretrained(args))
    truth = load_mvtec(saved.root, saved.category)
    _print_demo_check(pipe, paths, truth, load_masks(truth))


def _print_demo_check(pipe, paths, truth, masks):
    """Compare with the planted defects: image and pixel AUROC, hits and false alarms."""
    from sklearn.metrics import roc_auc_score

    index = {Path(p).resolve(): i for i, p in enumerate(truth.paths)}
    order = [index[p.resolve()] for p in paths]
    labels, masks = truth.labels[order], masks[order]
    rscin, msm = pipe["rscin"], pipe["msm"]
    maps = np.stack(maps_to_original(msm.anomaly_maps_, [m.shape for m in masks], pipe["vit"].input_size_))
    found = rscin.labels_ == -1
    print(f"check against the planted defects: image AUROC {roc_auc_score(labels, rscin.anomaly_scores_):.3f}, "
          f"pixel AUROC {roc_auc_score(masks.ravel(), maps.ravel()):.3f}; "
          f"{int((found & (labels == 1)).sum())} of {int(labels.sum())} defective images flagged, "
          f"{int((found & (labels == 0)).sum())} false alarms")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="sklearn-musc",
        description="Zero-shot anomaly detection (MuSc) on a batch of unlabeled images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score every image under DIR as one batch")
    score.add_argument("directory", metavar="DIR")
    score.add_argument("--out", required=True, help="folder for scores.csv and overlays/")
    _add_model_options(score, backbone="open_clip:ViT-L-14-336", image_size=518)
    demo = sub.add_parser("demo", help="generate a small synthetic batch with defects and score it")
    demo.add_argument("--out", default="musc-demo", help="folder for the images and results (default %(default)s)")
    _add_model_options(demo, backbone=DEMO_BACKBONE, image_size=224)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args)
    else:
        run_score(args, args.directory, _pretrained(args))
    return 0
