"""The command line's runs: loading the backbone, scoring a batch, fitting and scoring with a saved model.

* :func:`load_backbone` builds the ViT step; without network it reads the
  hub's cache only (one quick probe) and fails at once with
  :class:`~sklearn_musc.cli.errors.WeightsUnavailable`.
* :func:`compute` (a batch whose images score each other) and
  :func:`compute_new` (new images against a saved model's pool) run the
  pipeline, one stage line on stderr per step, into a
  :class:`~sklearn_musc.cli.outputs.ScoreResults`;
  :class:`~sklearn_musc.cli.outputs.OutputFolder` writes it.
* :func:`run_score`, :func:`run_fit` and :func:`run_score_model` are the
  commands: check, compute (inside :func:`~sklearn_musc.cli.errors.running`,
  so that a library error there is a failure, exit 3), write.
"""

import contextlib
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

from .._device import resolve_device
from ..conformal import min_calibration_size
from ..images import ImageFiles
from ..monitoring import DriftMonitor
from ..thresholds import labels_above
from .errors import InputError, WeightsUnavailable, one_line, running
from .estimate import announce, announce_new
from .options import (MODEL_OPTIONS, MODEL_STEPS, ask, build_pipeline, check_options, collect_inputs, option,
                      pretrained)
from .outputs import OutputFolder, ScoreResults


def stage(text):
    """One stage line on stderr."""
    print(text, file=sys.stderr, flush=True)


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


def _timed_stage(timings, key, line, fn, *args):
    """One stage: its line on stderr, ``fn(*args)`` timed into ``timings[key]``."""
    stage(line)
    start = time.perf_counter()
    out = fn(*args)
    timings[key] = time.perf_counter() - start
    return out


def compute(pipe, paths, names, *, skipped=(), settings=None, references=None):
    """Run the fitted-backbone pipeline over the batch (with known-good ``references``); a ScoreResults."""
    vit, lnamd, msm, rscin = (pipe[k] for k in ("vit", "lnamd", "msm", "rscin"))
    timings = {}
    n = len(paths)
    start = time.perf_counter()
    tokens = _timed_stage(timings, "vit", f"[2/5] ViT patch tokens of {n} images ({vit.backbone_}, "
                          f"{vit.input_size_[0]} x {vit.input_size_[1]} px, device {vit.device_})"
                          + (f" and of {len(references)} references" if references else ""),
                          vit.transform, ImageFiles(paths))
    ref_tokens = None if not references else vit.transform(ImageFiles(references))
    feats = _timed_stage(timings, "lnamd", f"[3/5] LNAMD aggregation (r_list {tuple(lnamd.r_list)})",
                  lnamd.fit_transform, tokens)
    ref_feats = None if ref_tokens is None else lnamd.fit_transform(ref_tokens)  # LNAMD's fit only checks shapes
    del tokens, ref_tokens
    image_scores = _timed_stage(timings, "mutual_scoring", f"[4/5] mutual scoring of {n} images "
                         f"({feats.features.shape[1]} feature sets)", msm.fit_transform, feats, None, ref_feats)
    del feats, ref_feats
    _timed_stage(timings, "rscin", f"[5/5] RsCIN re-scoring (k_list {tuple(rscin.k_list)})", rscin.fit, image_scores)
    timings["scoring_total"] = time.perf_counter() - start
    labels, threshold, masks, decision = rscin.labels_, rscin.threshold_, rscin.anomaly_masks_, None
    pvalues = msm.__dict__.get("pvalues_")
    if references:
        decision = dict(rule="contamination", references=len(references),
                        text=f"RsCIN's rule on its re-scored values; p-values against {len(references)} "
                             "references in the p-value column (give --fdr to label by them)")
    if msm.fdr is not None:  # the calibrated decision is the detector's; RsCIN's scores still rank
        labels, threshold, masks = msm.labels_, msm.threshold_, msm.anomaly_masks_
        decision = dict(rule="benjamini-hochberg", fdr=msm.fdr, references=len(references),
                        text=f"Benjamini-Hochberg at false-discovery level {msm.fdr:g} on the p-values against "
                             f"{len(references)} known-good references (the detector's decision; the "
                             "score column still ranks by RsCIN)")
    return ScoreResults(
        paths=paths, names=names, scores=rscin.anomaly_scores_, labels=labels,
        detector_scores=msm.anomaly_scores_, threshold=threshold,
        anomaly_maps=msm.anomaly_maps_, original_sizes=msm.original_sizes_,
        input_size=vit.input_size_, masks=masks, settings=dict(settings or {}), timings=timings,
        skipped=skipped, pvalues=pvalues, decision=decision,
    )


def _settings(args, pipe):
    vit = pipe["vit"]
    return {
        "backbone": vit.backbone_, "pretrained": None if args.weights is not None else pretrained(args),
        "weights": str(args.weights) if args.weights is not None else None,
        "image_size": list(vit.input_size_), "layers": list(vit.layers_),
        "preset": args.preset, "r_list": list(option(args, "r_list")), "k_list": list(option(args, "k_list")),
        "contamination": args.contamination, "max_subset_size": args.max_subset_size,
        "device": str(vit.device_), "batch_size": args.batch_size,
        "references": None, "fdr": getattr(args, "fdr", None),
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
    if results.decision is not None:
        print(f"  labels: {results.decision['text']}", file=stream)
    if results.drift is not None:
        d = results.drift
        if d["alarm"]:
            print(f"  DRIFT ALARM at part {d['alarm_index'] + 1} of {d['parts_seen']} "
                  f"({results.names[d['alarm_index']]}): the new parts stopped being exchangeable "
                  f"(level {d['level']:g}); check the line and the pool", file=stream)
        else:
            print(f"  no drift alarm over {d['parts_seen']} parts (level {d['level']:g})", file=stream)
    if results.skipped:
        print(f"  {len(results.skipped)} unreadable image(s) skipped (listed in summary.json)", file=stream)
    order = np.argsort(-results.scores, kind="stable")
    print("most anomalous:", file=stream)
    for i in order[: min(5, n)]:
        verdict = "anomalous" if results.labels[i] == -1 else "normal"
        print(f"  {results.scores[i]:.3f}  {verdict:9s}  {results.names[i]}", file=stream)


def _load_checked_backbone(args, pipe):
    stage(f"[1/5] loading the backbone {args.backbone}")
    vit = load_backbone(pipe["vit"])
    ask(pipe["lnamd"].check_grid, vit.grid_size_, options=f"--r-list with --image-size {args.image_size}")
    return vit


def _check_batch(args, pipe, n_images, n_references=0):
    """The detector's own checks of its parameters against the batch, before the backbone loads."""
    size = args.max_subset_size
    ask(pipe["msm"].check_batch, n_images, n_references,
        options=None if size is None else f"--max-subset-size {size}")


def run_score(args, directory, pretrained):
    """Check everything, compute, write; returns the ScoreResults."""
    t0 = time.perf_counter()
    check_options(args)
    folder = OutputFolder(args.out, overwrite=args.overwrite)
    folder.check()
    paths, names, skipped = collect_inputs(args, directory)
    references = None
    if getattr(args, "references", None):
        references, _, ref_skipped = collect_inputs(args, args.references, minimum=1)
        if ref_skipped:
            raise InputError(f"cannot read reference {ref_skipped[0][0]}: {ref_skipped[0][1]} (references are "
                             "never skipped: fix or remove it)")
        overlap = set(map(os.path.realpath, references)) & set(map(os.path.realpath, paths))
        if overlap:
            raise InputError(f"{sorted(overlap)[0]} is both in the batch and among the --references: a "
                             "reference cannot calibrate its own score")
    pipe = build_pipeline(args, pretrained)
    _check_batch(args, pipe, len(paths), len(references or ()))
    t = time.perf_counter()
    _load_checked_backbone(args, pipe)
    load_seconds = time.perf_counter() - t
    announce(pipe["vit"], pipe["lnamd"], len(paths), len(references or ()), args.max_subset_size, stage)
    with running():
        settings = _settings(args, pipe)
        settings["references"] = None if references is None else len(references)
        results = compute(pipe, paths, names, skipped=skipped, settings=settings, references=references)
    results.timings = {"checks": t - t0, "load_backbone": load_seconds, **results.timings}
    print_summary(results, results.timings["scoring_total"], args.contamination)
    t = time.perf_counter()
    files = folder.write(results, overlays=not args.no_overlays, command=getattr(args, "argv", None))
    print(f"wrote {len(files)} files to {folder.path}/ (scores.csv, summary.json, report.html"
          f"{', overlays/' if not args.no_overlays else ''}, maps/"
          f"{', masks/' if results.masks is not None else ''}) in {time.perf_counter() - t:.1f} s")
    return results


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
    if args.alpha is not None and len(paths) < min_calibration_size(args.alpha):
        raise InputError(f"--alpha {args.alpha:g} needs at least {min_calibration_size(args.alpha)} references "
                         f"(a p-value is at least 1 / (references + 1)), found {len(paths)}: raise --alpha or "
                         "add good parts")
    pipe = build_pipeline(args, pretrained(args), novelty=True)
    _check_batch(args, pipe, len(paths))
    _load_checked_backbone(args, pipe)
    announce(pipe["vit"], pipe["lnamd"], len(paths), 0, args.max_subset_size, stage)
    with running():
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
    if msm.alpha is not None:
        print(f"  new images are labelled at false-alarm rate {msm.alpha:g}: calibrated on the {len(paths)} "
              f"references, detector threshold {msm.threshold_:.4f} (p-value <= {msm.alpha:g})")
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
        raise InputError(f"--model {path} cannot be read ({type(exc).__name__}: {one_line(exc)})") from None
    ok = (isinstance(pipe, Pipeline) and [name for name, _ in pipe.steps] == MODEL_STEPS
          and pipe["msm"].novelty and pipe["rscin"].novelty)
    if not ok:
        raise InputError(f"--model {path} is not a model saved by 'sklearn-musc fit'")
    return pipe


def compute_new(pipe, paths, names, *, skipped=(), settings=None, drift_level=None):
    """Score new images against a saved model's pool; a ScoreResults like :func:`compute`'s."""
    vit, lnamd, msm, rscin = (pipe[k] for k in MODEL_STEPS)
    timings = {}
    start = time.perf_counter()
    tokens = _timed_stage(timings, "vit", f"[2/4] ViT patch tokens of {len(paths)} images ({vit.backbone_}, "
                          f"{vit.input_size_[0]} x {vit.input_size_[1]} px)", vit.transform, ImageFiles(paths))
    new = _timed_stage(timings, "scoring",
                       f"[3/4] LNAMD and scoring against the pool of {msm.pool_.n_images} images",
                       lambda: msm.transform(lnamd.fit_transform(tokens)))  # LNAMD's fit only checks the shapes
    scores = -_timed_stage(timings, "rscin", "[4/4] RsCIN re-scoring against the pool", rscin.score_samples, new)
    timings["scoring_total"] = time.perf_counter() - start
    labels, threshold, masks = rscin.predict(new), rscin.threshold_, rscin.predict_masks(new)
    decision = None
    if msm.alpha is not None:  # a calibrated model: the detector decides (p-value <= alpha), RsCIN still ranks
        threshold, labels = new.threshold, labels_above(new.scores, new.threshold)  # the detector's rule
        masks = new.anomaly_masks
        decision = dict(rule="conformal", alpha=msm.alpha, calibration_size=msm.pool_.n_images,
                        text=f"p-value <= {msm.alpha:g} against the pool's {msm.pool_.n_images} references: a good "
                             f"part is flagged with probability at most {msm.alpha:g} (the detector's decision; "
                             "the score column still ranks by RsCIN)")
    drift = None
    if drift_level is not None:
        drift = DriftMonitor(level=drift_level, random_state=0).fit(new.scores).summary()
    return ScoreResults(
        paths=paths, names=names, scores=scores, labels=labels,
        detector_scores=new.scores, threshold=threshold, anomaly_maps=new.anomaly_maps,
        original_sizes=new.original_sizes, input_size=vit.input_size_, masks=masks,
        settings=dict(settings or {}), timings=timings, skipped=skipped, pvalues=new.pvalues,
        decision=decision, drift=drift,
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
    stage(f"[1/4] loading the model {args.model}")
    pipe = load_model(args.model)
    device = resolve_device(args.device)
    pipe.set_params(vit__device=str(device), vit__batch_size=args.batch_size,
                    vit__progress=not args.no_progress, lnamd__device=str(device), msm__device=str(device),
                    lnamd__progress=not args.no_progress, msm__progress=not args.no_progress)
    pool = pipe["msm"].pool_
    announce_new(pipe["vit"], pool.features.shape[1], len(paths), pool.n_images, stage)
    settings = {"model": str(Path(args.model).resolve()), "pool_size": pipe["msm"].pool_.n_images,
                "backbone": pipe["vit"].backbone_, "image_size": list(pipe["vit"].input_size_),
                "device": str(device), "alpha": pipe["msm"].get_params().get("alpha"),
                "drift_level": args.drift_level}
    with running():
        results = compute_new(pipe, paths, names, skipped=skipped, settings=settings,
                              drift_level=args.drift_level)
    results.timings = {"checks_and_load": time.perf_counter() - t0 - results.timings["scoring_total"],
                       **results.timings}
    print_summary(results, results.timings["scoring_total"], "model")
    t = time.perf_counter()
    files = folder.write(results, overlays=not args.no_overlays, command=getattr(args, "argv", None))
    print(f"wrote {len(files)} files to {folder.path}/ in {time.perf_counter() - t:.1f} s")
    return results
