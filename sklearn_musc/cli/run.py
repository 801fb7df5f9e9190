"""The command line's runs: loading the backbone, scoring a batch, fitting and scoring with a saved model.

* :func:`load_backbone` builds the ViT step; without network it reads the
  hub's cache only (one quick probe) and fails at once with
  :class:`~sklearn_musc.cli.errors.WeightsUnavailable`.
* :func:`compute` (a batch whose images score each other) and
  :func:`compute_new` (new images against a saved model's pool) run the
  pipeline, one stage line on stderr per step, into a
  :class:`~sklearn_musc.cli.outputs.ScoreResults`;
  :class:`~sklearn_musc.cli.outputs.OutputFolder` writes it.
* :func:`compute_fused` scores rgb images and their point clouds together
  (``--modality rgb+3d``: :class:`~sklearn_musc.CrossModalDetector`);
  :func:`compute` with a point-cloud step scores the clouds alone
  (``--modality 3d``).
* :func:`run_score`, :func:`run_fit` and :func:`run_score_model` are the
  commands: check, compute (inside :func:`~sklearn_musc.cli.errors.running`,
  so that a library error there is a failure, exit 3), write.
"""

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
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from .._batch import MultimodalFeatures
from .._device import resolve_device
from ..conformal import min_calibration_size
from ..fusion import CrossModalDetector
from ..images import ImageFiles
from ..monitoring import DriftMonitor
from ..pointcloud import PointCloudPatchTransformer
from ..presets import PRESETS
from ..thresholds import labels_above
from .errors import InputError, WeightsUnavailable, one_line, running
from .estimate import announce, announce_clouds, announce_new
from .inputs import Sample, check_sample, collect_images, collect_samples
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


def compute(pipe, paths, names, *, skipped=(), settings=None, references=None, cloud=None, xyz=None,
            ref_xyz=None):
    """Run the fitted-backbone pipeline over the batch (with known-good ``references``); a ScoreResults.

    With ``cloud`` (a fitted :class:`~sklearn_musc.PointCloudPatchTransformer`)
    the point clouds ``xyz`` (and ``ref_xyz``) are scored in place of the
    images; ``paths`` are still the rgb images the outputs are drawn on.
    """
    vit, lnamd, msm, rscin = (pipe[k] for k in ("vit", "lnamd", "msm", "rscin"))
    timings = {}
    n = len(paths)
    start = time.perf_counter()
    if cloud is not None:
        tokens, ref_tokens = _cloud_tokens(timings, cloud, xyz, ref_xyz, "[2/5]")
        vit = cloud
    else:
        tokens = _timed_stage(timings, "vit", f"[2/5] ViT patch tokens of {n} images ({vit.backbone_}, "
                              f"{vit.input_size_[0]} x {vit.input_size_[1]} px, device {vit.device_})"
                              + (f" and of {len(references)} references" if references else "")
                              + _turns_text(vit),
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
    return _batch_results(msm, rscin, paths, names, references, vit.input_size_, settings, timings, skipped)


def _turns_text(vit):
    """What the ViT stage line says of the turned copies (``--turns``)."""
    return f", with turned copies {','.join(vit.turns_)} as extra scorers" if vit.turns_ else ""


def _batch_results(detector, rscin, paths, names, references, input_size, settings, timings, skipped):
    """The ScoreResults of a scored batch: RsCIN's scores; its labels, or the detector's with ``fdr``."""
    labels, threshold, masks = rscin.labels_, rscin.threshold_, rscin.anomaly_masks_
    if detector.fdr is not None:  # the calibrated decision is the detector's; RsCIN's scores still rank
        labels, threshold, masks = detector.labels_, detector.threshold_, detector.anomaly_masks_
    return ScoreResults(
        paths=paths, names=names, scores=rscin.anomaly_scores_, labels=labels,
        detector_scores=detector.anomaly_scores_, threshold=threshold,
        anomaly_maps=detector.anomaly_maps_, original_sizes=detector.original_sizes_,
        input_size=input_size, crop_mode=detector.crop_mode_, masks=masks, settings=dict(settings or {}),
        timings=timings, skipped=skipped, pvalues=detector.__dict__.get("pvalues_"),
        decision=_decision(detector, references),
    )


def _decision(detector, references):
    """How a batch with ``references`` is labelled (None without): RsCIN's rule, or the detector's ``fdr``."""
    if not references:
        return None
    if detector.fdr is None:
        return dict(rule="contamination", references=len(references),
                    text=f"RsCIN's rule on its re-scored values; p-values against {len(references)} "
                         "references in the p-value column (give --fdr to label by them)")
    return dict(rule="benjamini-hochberg", fdr=detector.fdr, references=len(references),
                text=f"Benjamini-Hochberg at false-discovery level {detector.fdr:g} on the p-values against "
                     f"{len(references)} known-good references (the detector's decision; the "
                     "score column still ranks by RsCIN)")


def _settings(args, pipe, modality="rgb", cloud=None):
    vit = pipe["vit"]
    settings = {
        "backbone": vit.backbone_, "pretrained": None if args.weights is not None else pretrained(args),
        "weights": str(args.weights) if args.weights is not None else None,
        "image_size": list(vit.input_size_), "crop_mode": vit.crop_mode, "layers": list(vit.layers_),
        "turns": list(vit.turns_) or None,
    } if modality != "3d" else {"backbone": None, "image_size": list(cloud.input_size_)}
    settings.update({
        "preset": args.preset, "r_list": list(option(args, "r_list")), "k_list": list(option(args, "k_list")),
        "contamination": args.contamination, "max_subset_size": args.max_subset_size,
        "device": str((cloud if modality == "3d" else vit).device_), "batch_size": args.batch_size,
        "references": None, "fdr": getattr(args, "fdr", None),
    })
    if getattr(args, "modality", None) is not None or cloud is not None:
        settings["modality"] = modality
    if cloud is not None:
        settings.update(point_cloud=cloud.backbone_, patch_grid=list(cloud.grid_size_),
                        fusion=(getattr(args, "fusion", None) or DEFAULT_FUSION) if modality == "rgb+3d" else None)
    return settings


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


def _load_checked_backbone(args, pipe, total=5):
    stage(f"[1/{total}] loading the backbone {args.backbone}")
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
    modality = getattr(args, "modality", None)
    samples = collect_samples(directory, args.out, need_xyz=modality != "rgb")
    modality = _check_modality(args, samples is not None)
    if samples is None:
        paths, names, skipped = collect_inputs(args, directory)
        references = _references(args, paths)
        xyz = ref_xyz = None
    else:
        samples, skipped = _checked_samples(args, samples, directory)
        refs = _reference_samples(args, samples, need_xyz=modality != "rgb")
        paths, names, xyz = [s.rgb for s in samples], [s.name for s in samples], [s.xyz for s in samples]
        references = None if refs is None else [s.rgb for s in refs]
        ref_xyz = None if refs is None else [s.xyz for s in refs]
    pipe = build_pipeline(args, pretrained)
    if modality == "rgb+3d":  # the clouds are centre-cropped: the images must cover the same pixels
        pipe.set_params(vit__crop_mode="center")
    _check_batch(args, pipe, len(paths), len(references or ()))
    t = time.perf_counter()
    cloud = None
    if modality != "3d":
        _load_checked_backbone(args, pipe, total=6 if modality == "rgb+3d" else 5)
    if modality != "rgb":
        vit = pipe["vit"] if modality == "rgb+3d" else None
        if modality == "3d":
            stage(f"[1/5] building the point-cloud step (FPFH, {_size_text(args.image_size)} px grid)")
        cloud = _cloud_step(args, vit)
        ask(pipe["lnamd"].check_grid, cloud.grid_size_, options=f"--r-list with --image-size {args.image_size}")
    load_seconds = time.perf_counter() - t
    n_refs = len(references or ())
    if cloud is None:
        announce(pipe["vit"], pipe["lnamd"], len(paths), n_refs, args.max_subset_size, stage)
    else:
        _cloud_tokens({}, cloud, xyz[:1], None, None)  # the first cloud pays for the imports: not timed
        t_cloud = time.perf_counter()
        _cloud_tokens({}, cloud, xyz[1:2], None, None)
        announce_clouds(time.perf_counter() - t_cloud, len(paths) + n_refs, stage,
                        *((pipe["vit"], pipe["lnamd"]) if modality == "rgb+3d" else ()))
    with running():
        settings = _settings(args, pipe, modality, cloud)
        settings["references"] = None if references is None else len(references)
        if modality == "rgb+3d":
            results = compute_fused(pipe, _fused_detector(args, pipe), cloud, paths, xyz, names, skipped=skipped,
                                    settings=settings, references=references, ref_xyz=ref_xyz)
        else:
            results = compute(pipe, paths, names, skipped=skipped, settings=settings, references=references,
                              cloud=cloud, xyz=xyz, ref_xyz=ref_xyz)
    results.timings = {"checks": t - t0, "load_backbone": load_seconds, **results.timings}
    print_summary(results, results.timings["scoring_total"], args.contamination)
    t = time.perf_counter()
    files = folder.write(results, overlays=not args.no_overlays, command=getattr(args, "argv", None))
    print(f"wrote {len(files)} files to {folder.path}/ (scores.csv, summary.json, report.html"
          f"{', overlays/' if not args.no_overlays else ''}, maps/"
          f"{', masks/' if results.masks is not None else ''}) in {time.perf_counter() - t:.1f} s")
    return results


def _references(args, paths):
    """The --references image files of a 2D batch (never skipped, never in the batch)."""
    if not getattr(args, "references", None):
        return None
    references, _, ref_skipped = collect_inputs(args, args.references, minimum=1)
    if ref_skipped:
        raise InputError(f"cannot read reference {ref_skipped[0][0]}: {ref_skipped[0][1]} (references are "
                         "never skipped: fix or remove it)")
    _check_no_overlap(references, paths)
    return references


def _check_no_overlap(references, paths):
    overlap = set(map(os.path.realpath, references)) & set(map(os.path.realpath, paths))
    if overlap:
        raise InputError(f"{sorted(overlap)[0]} is both in the batch and among the --references: a "
                         "reference cannot calibrate its own score")


# --------------------------------------------------------------------------- point clouds

MODALITIES = ("rgb", "3d", "rgb+3d")
FUSIONS = ("sum", "cae")
# The default of a folder with point clouds, and why: benchmarks/RESULTS.md, "3D and 2D + 3D".
DEFAULT_MODALITY, DEFAULT_FUSION = "rgb+3d", "sum"
_CLOUD_UNUSED = ("backbone", "pretrained", "weights", "layers", "turns")  # the ViT's: not used by --modality 3d


def _check_modality(args, has_clouds):
    """The modality of the run (``--modality``, else rgb+3d with clouds, rgb without); usage errors."""
    modality, fusion = getattr(args, "modality", None), getattr(args, "fusion", None)
    if not has_clouds:
        if modality in ("3d", "rgb+3d"):
            raise InputError(f"--modality {modality} needs point clouds, and {args.targets[0]} holds none (xyz "
                             "TIFFs in an xyz/ folder beside rgb/, or beside the image of the same stem)")
        if fusion is not None:
            raise InputError(f"--fusion joins rgb and 3D scores, and {args.targets[0]} holds no point cloud")
        return "rgb"
    modality = modality or DEFAULT_MODALITY
    if fusion is not None and modality != "rgb+3d":
        raise InputError(f"--fusion joins rgb and 3D scores: it needs --modality rgb+3d, not {modality}")
    if modality != "rgb" and _preset_embedding(args) == "image":
        raise InputError(f"--preset {args.preset} re-scores on the backbone's image embedding, which point "
                         f"clouds do not have: use --preset default with --modality {modality}")
    if modality == "rgb+3d" and getattr(args, "crop_mode", None) not in (None, "center"):
        raise InputError(f"--crop-mode {args.crop_mode} is not supported with --modality rgb+3d: the point clouds "
                         "are centre-cropped, so the images are too (leave --crop-mode out, or use --modality rgb)")
    if modality == "rgb+3d" and getattr(args, "turns", None):
        raise InputError("--turns is not supported with --modality rgb+3d (the fused detector scores without "
                         "turned copies): leave it out, or use --modality rgb")
    if modality == "rgb+3d" and args.max_subset_size is not None:
        raise InputError("--max-subset-size is not supported with --modality rgb+3d (the fused detector "
                         "scores the whole batch): leave it out, or use --modality rgb or 3d")
    if modality == "3d":
        given = [o for o in _CLOUD_UNUSED if getattr(args, o) != args.model_defaults[o]]
        if given:
            raise InputError(f"--{given[0]} sets the ViT, which --modality 3d does not use (point clouds only)")
    return modality


def _preset_embedding(args):
    """The RsCIN embedding the --preset asks for."""
    return PRESETS[args.preset].get("rscin__embedding", "auto")


def _size_text(size):
    return f"{size} x {size}" if isinstance(size, int) else f"{size[0]} x {size[1]}"


def _checked_samples(args, samples, root):
    """The samples whose rgb image and cloud can be read (bad ones skipped or fatal), and the skipped ones."""
    bad = [(s, reason) for s in samples if (reason := check_sample(s)) is not None]
    skipped = []
    if bad:
        if not getattr(args, "skip_unreadable", False):
            more = f" ({len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
            raise InputError(f"{bad[0][1]}{more}; fix or remove it, or pass --skip-unreadable")
        skipped = [(s.name, reason) for s, reason in bad]
        for name, reason in skipped:
            print(f"skipping sample {name}: {reason}", file=sys.stderr)
        dropped = {s.name for s, _ in bad}
        samples = [s for s in samples if s.name not in dropped]
    if len(samples) < 2:
        raise InputError(f"found {len(samples)} readable sample(s) in {root}; mutual scoring needs 2 or more")
    if args.max_subset_size is not None and len(samples) // math.ceil(len(samples) / args.max_subset_size) < 2:
        raise InputError(f"{len(samples)} samples cannot be split into subsets of at most "
                         f"{args.max_subset_size} with 2 or more each; raise --max-subset-size")
    return samples, skipped


def _reference_samples(args, batch, need_xyz):
    """The --references of a batch with point clouds: samples as the batch's (folders), never skipped."""
    if not getattr(args, "references", None):
        return None
    refs = []
    for target in map(Path, args.references):
        if target.is_file():
            raise InputError(f"--references {target}: give folders (samples as the batch's: rgb/ and xyz/, or "
                             "an image and an xyz TIFF of the same stem)")
        found = collect_samples(target, args.out, need_xyz=need_xyz)
        if found is None:
            if need_xyz:
                raise InputError(f"--references {target} holds no point cloud; the batch's samples have one "
                                 "(give references of the same kind, or --modality rgb)")
            found = [Sample(p, None, p.relative_to(target).as_posix(), None) for p in collect_images(target, args.out)]
        refs += found
    if not refs:
        raise InputError(f"found no reference in {' '.join(args.references)}")
    for ref in refs:
        reason = check_sample(ref)
        if reason is not None:
            raise InputError(f"reference: {reason} (references are never skipped: fix or remove it)")
    _check_no_overlap([r.rgb for r in refs], [s.rgb for s in batch])
    return refs


def _refuse_point_clouds(targets, out, command):
    """``fit`` and ``score --model`` take images: a folder with point clouds is refused, not read as images."""
    for target in map(Path, targets):
        try:
            found = target.is_dir() and collect_samples(target, out, need_xyz=False) is not None
        except InputError:
            found = True  # clouds without their images: point clouds all the same
        if found:
            raise InputError(f"{target} holds point clouds: '{command}' takes rgb images only; score samples with "
                             "point clouds as one batch (sklearn-musc score DIR, known-good ones with --references)")


def _cloud_step(args, vit=None):
    """The fitted point-cloud step on the ViT's patch grid (``vit``), or on --image-size with 14-pixel patches."""
    try:
        import open3d  # noqa: F401 - FPFH's library: missing, it is a usage error before any feature
    except ImportError as exc:
        raise InputError(f"point clouds need open3d (pip install 'sklearn-musc[3d]'; on Linux also the system "
                         f"library libusb-1.0): {one_line(exc)}") from None
    size = vit.input_size_ if vit is not None else args.image_size
    patch = vit.patch_size_[0] if vit is not None else 14
    return PointCloudPatchTransformer(image_size=size, patch_size=patch, device=args.device).fit()


def _fused_detector(args, pipe):
    """CrossModalDetector with the --preset's interval and the run's contamination and device."""
    msm = pipe["msm"]
    return CrossModalDetector(fusion=getattr(args, "fusion", None) or DEFAULT_FUSION, topmin_min=msm.topmin_min,
                              topmin_max=msm.topmin_max, contamination=msm.contamination, fdr=msm.fdr,
                              device=msm.device)


def _cloud_tokens(timings, cloud, xyz, ref_xyz, label):
    """The 3D patch tokens of the batch and of the references (None); a cloud the step cannot use is bad input.

    ``label`` None: no stage line (the clouds timed for the announcement).
    """
    refs = f" and of {len(ref_xyz)} references" if ref_xyz else ""
    line = (f"{label} 3D patch tokens of {len(xyz)} point clouds{refs} ({cloud.backbone_}, "
            f"{cloud.grid_size_[0]} x {cloud.grid_size_[1]} patches)")
    try:
        if label is None:
            return cloud.transform(xyz), None
        tokens = _timed_stage(timings, "pointcloud", line, cloud.transform, xyz)
        ref_tokens = None if not ref_xyz else cloud.transform(ref_xyz)
    except ValueError as exc:  # e.g. no object left after the background plane: the cloud, not the run
        raise InputError(one_line(exc)) from None
    return tokens, ref_tokens


def compute_fused(pipe, detector, cloud, paths, xyz, names, *, skipped=(), settings=None, references=None,
                  ref_xyz=None):
    """rgb images and their point clouds scored together (``detector``: a CrossModalDetector); a ScoreResults."""
    vit, lnamd, rscin = pipe["vit"], pipe["lnamd"], pipe["rscin"]
    timings = {}
    n = len(paths)
    start = time.perf_counter()
    xyz_tokens, ref_xyz_tokens = _cloud_tokens(timings, cloud, xyz, ref_xyz, "[2/6]")
    tokens = _timed_stage(timings, "vit", f"[3/6] ViT patch tokens of {n} images ({vit.backbone_}, "
                          f"{vit.input_size_[0]} x {vit.input_size_[1]} px, device {vit.device_})"
                          + (f" and of {len(references)} references" if references else ""),
                          vit.transform, ImageFiles(paths))
    ref_tokens = None if not references else vit.transform(ImageFiles(references))
    lnamd_xyz = clone(lnamd)  # LNAMD's fit only checks the shapes: each modality has its own

    def aggregate(rgb, xyz_, ref_rgb, ref_xyz_):
        X = MultimodalFeatures(rgb=lnamd.fit_transform(rgb), xyz=lnamd_xyz.fit_transform(xyz_))
        R = None if ref_rgb is None else MultimodalFeatures(rgb=lnamd.fit_transform(ref_rgb),
                                                             xyz=lnamd_xyz.fit_transform(ref_xyz_))
        return X, R

    X, R = _timed_stage(timings, "lnamd", f"[4/6] LNAMD aggregation of both (r_list {tuple(lnamd.r_list)})",
                        aggregate, tokens, xyz_tokens, ref_tokens, ref_xyz_tokens)
    del tokens, ref_tokens, xyz_tokens, ref_xyz_tokens
    image_scores = _timed_stage(timings, "mutual_scoring", f"[5/6] fused mutual scoring of {n} samples "
                                f"({detector.fusion} fusion of rgb and 3D)", detector.fit_transform, X, None, R)
    del X, R
    _timed_stage(timings, "rscin", f"[6/6] RsCIN re-scoring (k_list {tuple(rscin.k_list)}, joined rgb + 3D "
                 "salient features)", rscin.fit, image_scores)
    timings["scoring_total"] = time.perf_counter() - start
    return _batch_results(detector, rscin, paths, names, references, vit.input_size_, settings, timings, skipped)


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
    _refuse_point_clouds(args.references, args.out, "fit")
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
    pool = msm.pool_
    size = pool.features.nbytes + (0 if pool.turned is None else pool.turned.nbytes)
    copies = f" with turned copies {','.join(msm.turns_)}" if msm.turns_ else ""
    print(f"fitted a pool of {len(paths)} images{copies} in {results.timings['scoring_total']:.1f} s: "
          f"{pool.features.shape[1]} feature sets, {size / 2**20:.0f} MiB of pool "
          f"features ({pool.features.dtype}); threshold {results.threshold:.4f}")
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
                       f"[3/4] LNAMD and scoring against the pool of {msm.pool_.n_images} images"
                       + (f" and their turned copies ({','.join(msm.turns_)})" if msm.turns_ else ""),
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
        original_sizes=new.original_sizes, input_size=vit.input_size_, crop_mode=new.crop_mode, masks=masks,
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
    _refuse_point_clouds(args.targets, args.out, "score --model")
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
                "crop_mode": pipe["vit"].crop_mode,
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
