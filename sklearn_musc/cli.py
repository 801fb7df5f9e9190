"""Command line: ``sklearn-musc score DIR --out OUT`` and ``sklearn-musc demo``.

Three parts, one concern each:

* inputs (:mod:`sklearn_musc._inputs`): the image files and every option are
  checked before any model runs;
* computing (:func:`compute`): the MuSc pipeline over the batch, one stage
  line on stderr per step, into a plain :class:`~sklearn_musc._outputs.ScoreResults`;
* outputs (:class:`~sklearn_musc._outputs.OutputFolder`): the files written
  from that results object, atomically.
"""

import argparse
import contextlib
import math
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from . import ViTPatchTransformer, __version__
from ._backbones import _check_weights_path, _weights_format, resolve_backbone
from ._device import resolve_device
from ._inputs import InputError, check_readable, collect_images, display_name
from ._outputs import OutputFolder, ScoreResults, output_names
from ._validation import check_contamination, check_int_list, check_size
from .preprocessing import IMAGE_SUFFIXES, ImageFiles, maps_to_original
from .presets import PRESETS, STEPS, available_presets, make_musc_pipeline, pretrained_from_options

DEMO_BACKBONE = "timm:vit_small_patch14_dinov2.lvd142m"
PRESET = PRESETS["default"]  # the backbone options' defaults (the demo has its own backbone and size)
# options whose default is the --preset's value
_PRESET_OPTIONS = {"r_list": "lnamd__r_list", "k_list": "rscin__k_list"}

EXIT_OK, EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 2, 3, 130

EPILOG = """\
outputs (in --out): scores.csv, summary.json, report.html, overlays/<name>.png,
maps/<name>.npy (float32 at the model input size), masks/ when masks exist;
<name> is the image's path under DIR, suffix kept (sub/x.jpg -> overlays/sub/x.jpg.png).
Hidden files and folders, the output folder and earlier runs' output folders are
never read as input. A folder holding an earlier run is refused unless --overwrite.

exit status: 0 success; 2 bad usage or input (an option, the input or output
folder, an unreadable image, the weights file or backbone name) -- nothing was
computed or written; 3 failure while running (weights not available offline, out
of memory, any other error; run again with --debug for the traceback);
130 interrupted (Ctrl-C): no output file is left half written.
"""


class WeightsUnavailable(Exception):
    """Pretrained weights that cannot be downloaded (offline, nothing cached)."""


def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW in positive pixels, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _contamination(text):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a share in (0, 0.5], got {text!r}")
    return value


def _add_common_options(parser):
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_model_options(parser, *, backbone, image_size):
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=backbone, help=f"open_clip:NAME or timm:NAME (default {backbone})")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag (downloaded once into the library's cache; default: the backbone's "
                        "own), or 'none' for random weights")
    g.add_argument("--weights", type=Path, default=None, help="local weights file (offline); overrides --pretrained")
    g.add_argument("--image-size", type=_image_size, default=image_size, help="N or HxW (default %(default)s)")
    g.add_argument("--layers", type=int, nargs="+", default=None, help="0-based blocks (default: 4 stage ends)")
    g.add_argument("--preset", choices=available_presets(), default="default",
                   help="settings after the backbone (sklearn_musc.presets): the library's defaults, or the "
                        "MuSc paper's for a dataset (default %(default)s)")
    g.add_argument("--r-list", type=int, nargs="+", default=None,
                   help="LNAMD degrees (odd; default: the preset's, 1 3 5)")
    g.add_argument("--k-list", type=int, nargs="+", default=None,
                   help="RsCIN windows (>= 1; default: the preset's, 1 7 by default)")
    g.add_argument("--contamination", type=_contamination, default="auto", help="'auto' or a share in (0, 0.5]")
    g.add_argument("--max-subset-size", type=int, default=None, help="score random subsets of at most this size")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    o = parser.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar (stage lines are still shown)")
    o.add_argument("--no-overlays", action="store_true", help="do not write heat-map PNGs")
    _add_common_options(parser)


def option(args, name):
    """The value of a model option, or the ``--preset``'s when it was left out (``r_list``, ``k_list``)."""
    value = getattr(args, name)
    if value is None and name in _PRESET_OPTIONS:
        return list(PRESETS[args.preset][_PRESET_OPTIONS[name]])
    return value


def build_pipeline(args, pretrained, novelty=False):
    """The ``--preset`` (default: "default") with the command-line options (``novelty``: a model for ``fit``)."""
    return make_musc_pipeline(
        args.preset,
        vit__backbone=args.backbone, vit__pretrained=pretrained, vit__image_size=args.image_size,
        vit__layers=args.layers, vit__device=args.device, vit__batch_size=args.batch_size,
        vit__progress=not args.no_progress,
        lnamd__r_list=tuple(option(args, "r_list")), lnamd__device=args.device,
        lnamd__dtype=getattr(args, "features_dtype", "float32"),
        msm__contamination=args.contamination, msm__device=args.device,
        msm__max_subset_size=args.max_subset_size, msm__novelty=novelty,
        rscin__k_list=tuple(option(args, "k_list")), rscin__contamination=args.contamination, rscin__novelty=novelty,
    )


# the options that define a model: fixed by --model, so refused beside it
MODEL_OPTIONS = ("backbone", "pretrained", "weights", "image_size", "layers", "preset", "r_list", "k_list",
                 "contamination", "max_subset_size")
MODEL_STEPS = list(STEPS)


def _stage(text):
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- (a) inputs


def check_options(args):
    """Every option that can be checked without images or a model; InputError when one is bad."""
    def check(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except (ValueError, TypeError) as exc:
            raise InputError(str(exc)) from None

    check(check_int_list, option(args, "r_list"), "--r-list", odd=True)
    check(check_int_list, option(args, "k_list"), "--k-list")
    check(check_contamination, args.contamination)
    check(check_size, args.image_size, "--image-size")
    if args.max_subset_size is not None and args.max_subset_size < 2:
        raise InputError(f"--max-subset-size must be 2 or more, got {args.max_subset_size}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, got {args.batch_size}")
    check(resolve_device, args.device)
    check(resolve_backbone, args.backbone)
    if args.weights is not None:
        try:
            _check_weights_path(args.weights)
            kind = _weights_format(args.weights)
        except OSError as exc:
            raise InputError(f"--weights: {exc}") from None
        if kind is None:
            raise InputError(f"--weights {args.weights} is neither a safetensors file nor a "
                             "PyTorch checkpoint; give the backbone's state dict")


def _targets(targets, out):
    """Image paths and display names of the folders and files given on the command line.

    One folder: names relative to it (``sub/x.png``). Several targets, or
    single files: each name starts with the name of the folder given (or of
    the folder that holds the file given), so that two folders holding
    ``x.png`` do not collide.
    """
    targets = [Path(t) for t in ([targets] if isinstance(targets, (str, Path)) else targets)]
    if len(targets) == 1 and not targets[0].is_file():
        root = targets[0]
        paths = collect_images(root, out)
        return paths, [display_name(p, root) for p in paths], root
    paths, names = [], []
    for target in targets:
        if target.is_file():
            if target.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{target} is not an image file (suffixes {' '.join(IMAGE_SUFFIXES)})")
            found, base = [target], target.resolve().parent.parent
        else:
            found, base = collect_images(target, out), target.resolve().parent
        paths += found
        names += [display_name(p.resolve(), base) for p in found]
    return paths, names, None


def collect_inputs(args, targets, minimum=2):
    """The readable image files of ``targets`` and the unreadable ones (skipped or fatal)."""
    paths, names, root = _targets(targets, args.out)
    output_names(names)
    shown = dict(zip(paths, names))
    bad = check_readable(paths)
    skipped = []
    if bad:
        first = bad[0]
        if not getattr(args, "skip_unreadable", False):
            more = f" ({len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
            raise InputError(f"cannot read image {shown[first.path]}: {first.reason}{more}; "
                             "fix or remove it, or pass --skip-unreadable")
        bad_paths = {b.path for b in bad}
        skipped = [(shown[b.path], b.reason) for b in bad]
        for name, reason in skipped:
            print(f"skipping unreadable image {name}: {reason}", file=sys.stderr)
        kept = [(p, n) for p, n in zip(paths, names) if p not in bad_paths]
        paths, names = [p for p, _ in kept], [n for _, n in kept]
    if len(paths) < minimum:
        suffixes = " ".join(IMAGE_SUFFIXES)
        where = root if root is not None else " ".join(str(t) for t in targets)
        need = "mutual scoring needs 2 or more" if minimum > 1 else "nothing to score"
        raise InputError(f"found {len(paths)} readable image(s) in {where} (suffixes {suffixes}; hidden "
                         f"files skipped); {need}")
    if args.max_subset_size is not None:
        n_subsets = math.ceil(len(paths) / args.max_subset_size)
        if len(paths) // n_subsets < 2:
            raise InputError(f"{len(paths)} images cannot be split into subsets of at most "
                             f"{args.max_subset_size} with 2 or more each; raise --max-subset-size")
    return paths, names, skipped


def _pretrained(args):
    """--weights FILE, else --pretrained TAG ('none': random init), else the backbone's default tag."""
    return pretrained_from_options(args.pretrained, args.weights)


def _hub_reachable(host="huggingface.co", timeout=5.0):
    def connect():
        socket.create_connection((host, 443), timeout=timeout).close()

    with ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(connect).result(timeout=timeout)
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
        yield hub.HF_HUB_OFFLINE
    finally:
        hub.HF_HUB_OFFLINE = previous


def load_backbone(vit):
    """Fit (build) the ViT step; weights that cannot be had offline raise WeightsUnavailable."""
    if vit.pretrained is None or _looks_like_file(vit.pretrained):
        return vit.fit()
    with _offline_unless_reachable() as offline:
        try:
            return vit.fit()
        except (ValueError, TypeError):
            raise
        except Exception as exc:
            where = ("huggingface.co cannot be reached and they are not in the local cache" if offline
                     else f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            raise WeightsUnavailable(
                f"cannot load the pretrained weights of {vit.backbone}: {where}; give a local weights "
                "file with --weights FILE (or --pretrained none for random weights)") from exc


def _looks_like_file(pretrained):
    return isinstance(pretrained, (str, Path)) and (Path(pretrained).suffix or "/" in str(pretrained))


# --------------------------------------------------------------------------- (b) computing


def _step(timings, key, line, fn, *args):
    """One stage: its line on stderr, ``fn(*args)`` timed into ``timings[key]``."""
    _stage(line)
    start = time.perf_counter()
    out = fn(*args)
    timings[key] = time.perf_counter() - start
    return out


def compute(pipe, paths, names, *, skipped=(), settings=None):
    """Run the fitted-backbone pipeline over the batch; a ScoreResults."""
    vit, lnamd, msm, rscin = (pipe[k] for k in ("vit", "lnamd", "msm", "rscin"))
    timings = {}
    n = len(paths)
    start = time.perf_counter()
    tokens = _step(timings, "vit", f"[2/5] ViT patch tokens of {n} images ({vit.backbone_}, {vit.input_size_[0]} "
                   f"x {vit.input_size_[1]} px, device {vit.device_})", vit.transform, ImageFiles(paths))
    feats = _step(timings, "lnamd", f"[3/5] LNAMD aggregation (r_list {tuple(lnamd.r_list)})",
                  lnamd.fit_transform, tokens)
    del tokens
    image_scores = _step(timings, "mutual_scoring", f"[4/5] mutual scoring of {n} images "
                         f"({feats.features.shape[1]} feature sets)", msm.fit_transform, feats)
    del feats
    _step(timings, "rscin", f"[5/5] RsCIN re-scoring (k_list {tuple(rscin.k_list)})", rscin.fit, image_scores)
    timings["scoring_total"] = time.perf_counter() - start
    return ScoreResults(
        paths=paths, names=names, scores=rscin.anomaly_scores_, labels=rscin.labels_,
        detector_scores=msm.anomaly_scores_, threshold=rscin.threshold_,
        anomaly_maps=msm.anomaly_maps_, original_sizes=msm.original_sizes_,
        input_size=vit.input_size_, masks=rscin.anomaly_masks_, settings=dict(settings or {}), timings=timings,
        skipped=skipped,
    )


def _settings(args, pipe):
    vit = pipe["vit"]
    return {
        "backbone": vit.backbone_, "pretrained": None if args.weights is not None else _pretrained(args),
        "weights": str(args.weights) if args.weights is not None else None,
        "image_size": list(vit.input_size_), "layers": list(vit.layers_),
        "preset": args.preset, "r_list": list(option(args, "r_list")), "k_list": list(option(args, "k_list")),
        "contamination": args.contamination, "max_subset_size": args.max_subset_size,
        "device": str(vit.device_), "batch_size": args.batch_size,
    }


def print_summary(results, seconds, contamination="auto", stream=None):
    stream = stream or sys.stdout
    n, flagged = len(results.names), results.n_anomalous
    print(f"scored {n} images in {seconds:.1f} s: {flagged} anomalous, {n - flagged} normal "
          f"(threshold {results.threshold:.3f})", file=stream)
    if contamination == "auto":
        print("  (contamination 'auto' finds a defective cluster only when it stands apart from the "
              "normal images; if defects are common and few are flagged, give their expected share "
              "with --contamination)", file=stream)
    if results.skipped:
        print(f"  {len(results.skipped)} unreadable image(s) skipped (listed in summary.json)", file=stream)
    order = np.argsort(-results.scores, kind="stable")
    print("most anomalous:", file=stream)
    for i in order[: min(5, n)]:
        verdict = "anomalous" if results.labels[i] == -1 else "normal"
        print(f"  {results.scores[i]:.3f}  {verdict:9s}  {results.names[i]}", file=stream)


def _load_checked_backbone(args, pipe):
    _stage(f"[1/5] loading the backbone {args.backbone}")
    vit = load_backbone(pipe["vit"])
    r_max, grid = max(option(args, "r_list")), vit.grid_size_
    if r_max > 2 * min(grid) - 1:
        raise InputError(f"--r-list {r_max} is too large for the {grid[0]} x {grid[1]} patch grid of "
                         f"--image-size {args.image_size}; use at most {2 * min(grid) - 1}")
    return vit


def run_score(args, directory, pretrained):
    """Check everything, compute, write; returns the ScoreResults."""
    t0 = time.perf_counter()
    check_options(args)
    folder = OutputFolder(args.out, overwrite=args.overwrite)
    folder.check()
    paths, names, skipped = collect_inputs(args, directory)
    pipe = build_pipeline(args, pretrained)
    t = time.perf_counter()
    _load_checked_backbone(args, pipe)
    load_seconds = time.perf_counter() - t
    args.phase = "compute"  # from here on, a library error is a runtime failure (exit 3)
    results = compute(pipe, paths, names, skipped=skipped, settings=_settings(args, pipe))
    results.timings = {"checks": t - t0, "load_backbone": load_seconds, **results.timings}
    print_summary(results, results.timings["scoring_total"], args.contamination)
    t = time.perf_counter()
    files = folder.write(results, overlays=not args.no_overlays, command=getattr(args, "argv", None))
    print(f"wrote {len(files)} files to {folder.path}/ (scores.csv, summary.json, report.html"
          f"{', overlays/' if not args.no_overlays else ''}, maps/"
          f"{', masks/' if results.masks is not None else ''}) in {time.perf_counter() - t:.1f} s")
    return results


# --------------------------------------------------------------------------- saved models


def run_fit(args):
    """``fit``: a novelty model from reference images, saved with joblib (atomically)."""
    check_options(args)
    model = Path(args.model)
    if model.is_dir():
        raise InputError(f"--model {model} is a folder; give a file name such as {model / 'model.joblib'}")
    if model.exists() and not args.overwrite:
        raise InputError(f"--model {model} exists; pass --overwrite to replace it")
    if not model.parent.is_dir():
        raise InputError(f"--model {model}: the folder {model.parent} does not exist")
    paths, names, skipped = collect_inputs(args, args.references)
    pipe = build_pipeline(args, _pretrained(args), novelty=True)
    _load_checked_backbone(args, pipe)
    args.phase = "compute"
    results = compute(pipe, paths, names, skipped=skipped)
    tmp = model.with_name(f".{model.name}.partial")
    try:
        joblib.dump(pipe, tmp)
        os.replace(tmp, model)  # a model file is complete or absent
    finally:
        tmp.unlink(missing_ok=True)
    msm = pipe["msm"]
    print(f"fitted a pool of {len(paths)} images in {results.timings['scoring_total']:.1f} s: "
          f"{msm.pool_.features.shape[1]} feature sets, {msm.pool_.features.nbytes / 2**20:.0f} MiB of pool "
          f"features ({msm.pool_.features.dtype}); threshold {results.threshold:.4f}")
    if results.n_anomalous:
        print(f"  {results.n_anomalous} reference image(s) score above the threshold themselves: check that "
              "the references are good parts", file=sys.stderr)
    print(f"wrote {model} ({model.stat().st_size / 2**20:.0f} MiB)")
    return pipe


def load_model(path):
    """A pipeline saved by ``fit``; InputError when the file is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--model {path} does not exist; make one with: sklearn-musc fit REFS --model {path}")
    try:
        pipe = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"--model {path} cannot be read ({type(exc).__name__}: {_one_line(exc)})") from None
    ok = (isinstance(pipe, Pipeline) and [name for name, _ in pipe.steps] == MODEL_STEPS
          and pipe["msm"].novelty and pipe["rscin"].novelty)
    if not ok:
        raise InputError(f"--model {path} is not a model saved by 'sklearn-musc fit'")
    return pipe


def compute_new(pipe, paths, names, *, skipped=(), settings=None):
    """Score new images against a saved model's pool; a ScoreResults like :func:`compute`'s."""
    vit, lnamd, msm, rscin = (pipe[k] for k in MODEL_STEPS)
    timings = {}
    start = time.perf_counter()
    tokens = _step(timings, "vit", f"[2/4] ViT patch tokens of {len(paths)} images ({vit.backbone_}, "
                   f"{vit.input_size_[0]} x {vit.input_size_[1]} px)", vit.transform, ImageFiles(paths))
    new = _step(timings, "scoring", f"[3/4] LNAMD and scoring against the pool of {msm.pool_.n_images} images",
                lambda: msm.transform(lnamd.fit_transform(tokens)))  # LNAMD's fit only checks the shapes
    scores = -_step(timings, "rscin", "[4/4] RsCIN re-scoring against the pool", rscin.score_samples, new)
    timings["scoring_total"] = time.perf_counter() - start
    return ScoreResults(
        paths=paths, names=names, scores=scores, labels=np.where(scores > rscin.threshold_, -1, 1),
        detector_scores=new.scores, threshold=rscin.threshold_, anomaly_maps=new.anomaly_maps,
        original_sizes=new.original_sizes, input_size=vit.input_size_, masks=rscin.predict_masks(new),
        settings=dict(settings or {}), timings=timings, skipped=skipped,
    )


def run_score_model(args):
    """``score --model``: new images (folders or files) against a saved model's pool."""
    t0 = time.perf_counter()
    given = [o for o in MODEL_OPTIONS if getattr(args, o) != args.model_defaults[o]]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} cannot be combined with --model: the model "
                         "fixes it (fit a new model to change it)")
    check_options(args)
    if not Path(args.model).is_file():
        raise InputError(f"--model {args.model} does not exist; make one with: sklearn-musc fit REFS "
                         f"--model {args.model}")
    folder = OutputFolder(args.out, overwrite=args.overwrite)
    folder.check()
    paths, names, skipped = collect_inputs(args, args.targets, minimum=1)
    _stage(f"[1/4] loading the model {args.model}")
    pipe = load_model(args.model)
    device = resolve_device(args.device)
    pipe.set_params(vit__device=str(device), vit__batch_size=args.batch_size,
                    vit__progress=not args.no_progress, lnamd__device=str(device), msm__device=str(device))
    args.phase = "compute"
    settings = {"model": str(Path(args.model).resolve()), "pool_size": pipe["msm"].pool_.n_images,
                "backbone": pipe["vit"].backbone_, "image_size": list(pipe["vit"].input_size_),
                "device": str(device)}
    results = compute_new(pipe, paths, names, skipped=skipped, settings=settings)
    results.timings = {"checks_and_load": time.perf_counter() - t0 - results.timings["scoring_total"],
                       **results.timings}
    print_summary(results, results.timings["scoring_total"], "model")
    t = time.perf_counter()
    files = folder.write(results, overlays=not args.no_overlays, command=getattr(args, "argv", None))
    print(f"wrote {len(files)} files to {folder.path}/ in {time.perf_counter() - t:.1f} s")
    return results


# --------------------------------------------------------------------------- demo


def _demo_pretrained(args):
    """Weights for the demo: a file, else the pretrained tag, else random init (with a warning)."""
    pretrained = _pretrained(args)
    if pretrained is None or args.weights is not None:
        return pretrained
    try:
        load_backbone(ViTPatchTransformer(backbone=args.backbone, pretrained=pretrained,
                                          image_size=args.image_size, device="cpu", progress=False))
        return pretrained
    except WeightsUnavailable as exc:  # no network and nothing cached
        print(
            f"warning: could not load pretrained weights for {args.backbone} ({exc.__cause__.__class__.__name__}: "
            "no network and nothing cached?); running the demo with a RANDOMLY INITIALISED backbone, "
            "so the maps show the mechanics only. Give a weights file with --weights FILE.",
            file=sys.stderr,
        )
        return None


def run_demo(args):
    from .datasets import load_masks, load_mvtec, make_synthetic_defects, save_synthetic_defects

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
    maps = np.stack(maps_to_original(results.anomaly_maps, [m.shape for m in masks], results.input_size))
    found = results.labels == -1
    print(f"check against the planted defects: image AUROC {roc_auc_score(labels, results.scores):.3f}, "
          f"pixel AUROC {roc_auc_score(masks.ravel(), maps.ravel()):.3f}; "
          f"{int((found & (labels == 1)).sum())} of {int(labels.sum())} defective images flagged, "
          f"{int((found & (labels == 0)).sum())} false alarms")


# --------------------------------------------------------------------------- main


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sklearn-musc",
        description="Zero-shot anomaly detection (MuSc) on a batch of unlabeled images.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sklearn-musc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="score every image under DIR as one batch, or new images against a saved --model",
        description="Without --model: the images under DIR score each other (one unlabeled batch). "
                    "With --model: each image of the given folders or files is scored against the "
                    "model's pool of references alone (its score does not depend on the other new images).")
    score.add_argument("targets", metavar="PATH", nargs="+",
                       help="DIR (a batch); with --model, one or more folders or image files")
    score.add_argument("--model", default=None,
                       help="a model saved by 'sklearn-musc fit' (a joblib file: load only files you trust)")
    score.add_argument("--out", required=True, help="folder for the results (see below)")
    score.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of an earlier run in --out (the files it wrote are removed)")
    score.add_argument("--skip-unreadable", action="store_true",
                       help="leave out images that cannot be read (listed on stderr and in summary.json) "
                            "instead of stopping")
    _add_model_options(score, backbone=PRESET["vit__backbone"], image_size=PRESET["vit__image_size"])
    score.set_defaults(model_defaults={o: score.get_default(o) for o in MODEL_OPTIONS})
    fit = sub.add_parser(
        "fit", help="make a model from reference images (a pool that scores new images) and save it",
        description="The reference images (known-good parts, or an unlabeled batch of the product) become "
                    "the pool that scores new images with 'sklearn-musc score PATH --model FILE'.",
        epilog="exit status as for 'score'; the model file is written whole or not at all.",
    )
    fit.add_argument("references", metavar="REFS", nargs="+", help="folders or image files of references")
    fit.add_argument("--model", required=True, help="the file to write (joblib), e.g. model.joblib")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --model file")
    fit.add_argument("--skip-unreadable", action="store_true", help="leave out images that cannot be read")
    fit.add_argument("--features-dtype", choices=["float32", "float16"], default="float32",
                     help="storage of the pool's features: float16 halves the model file "
                          "(scores move by about 2e-5)")
    fit.add_argument("--out", default=None, help=argparse.SUPPRESS)
    _add_model_options(fit, backbone=PRESET["vit__backbone"], image_size=PRESET["vit__image_size"])
    demo = sub.add_parser("demo", help="generate a small synthetic batch with defects and score it",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="musc-demo",
                      help="folder for the images and results, replaced on each run (default %(default)s)")
    _add_model_options(demo, backbone=DEMO_BACKBONE, image_size=224)
    return parser


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main(argv=None):
    """Run the command line; returns the exit status (argparse's own errors exit with 2)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["sklearn-musc", *argv]
    try:
        if args.command == "demo":
            run_demo(args)
        elif args.command == "fit":
            run_fit(args)
        elif args.model is not None:
            run_score_model(args)
        else:
            if len(args.targets) != 1 or Path(args.targets[0]).is_file():
                raise InputError("without --model, score takes one folder: its images score each other "
                                 "(to score single files, fit a model first: sklearn-musc fit REFS --model FILE)")
            run_score(args, args.targets[0], _pretrained(args))
        return EXIT_OK
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("sklearn-musc: interrupted; no output file was left half written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except WeightsUnavailable as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except (ValueError, FileNotFoundError, IsADirectoryError) as exc:
        # The library's own checks before computing (backbone, layers, weights file): bad input.
        if args.debug:
            raise
        if getattr(args, "phase", None) == "compute":
            print(f"sklearn-musc: error: {_one_line(exc)} (run with --debug for the traceback)",
                  file=sys.stderr)
            return EXIT_FAILURE
        print(f"sklearn-musc: error: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: out of memory: {_one_line(exc)}; try --max-subset-size, a smaller "
              "--image-size or --batch-size (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if args.debug:
            raise
        print(f"sklearn-musc: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILURE
