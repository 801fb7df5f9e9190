"""Writing the outputs of a scoring run from a plain results object.

Every scoring path (the batch ``score`` command, ``score --model`` with a
saved novelty model) builds a :class:`ScoreResults` and hands it to :class:`OutputFolder`,
which writes the same files for all of them::

    OUT/scores.csv               path, score, label, msm_score (one row per image)
    OUT/summary.json             settings, versions, timings, per-image results
    OUT/report.html              images sorted by score, with overlays and a histogram
    OUT/overlays/<name>.png      each image with its anomaly map on top (original size)
    OUT/maps/<name>.npy          each anomaly map, float32, at the model input size
    OUT/masks/<name>.png         each binary mask (original size), when masks are given
    OUT/.sklearn-musc-run.json   the list of files this run wrote (hidden)

``<name>`` is the image's path relative to the input folder, suffix kept
(``sub/x.jpg`` -> ``overlays/sub/x.jpg.png``), so names never collide.

Everything is written under a hidden staging folder first and moved into
place when complete, ``summary.json`` last: an interrupted or failed run
leaves no file that looks finished. A folder that holds an earlier run's
outputs is refused unless ``overwrite=True``, which then removes the files
that run wrote (its manifest lists them).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..geometry import dropped_fraction, masks_to_original
from ..images import load_image
from ..plotting import anomaly_map_rgb
from .errors import InputError
from .inputs import RUN_MANIFEST

__all__ = ["ScoreResults", "OutputFolder", "output_names"]

TOP_FILES = ("scores.csv", "summary.json", "report.html")
DATA_DIRS = ("overlays", "maps", "masks")
_STAGE_PREFIX = ".sklearn-musc-partial-"


@dataclass
class ScoreResults:
    """What a scoring run found, in the form the output writer takes.

    Attributes
    ----------
    paths : sequence of path
        The image files, in the order of the other per-image fields.
    names : sequence of str
        Display names (path relative to the input folder, "/" separators,
        valid UTF-8): the ``path`` column and the mirrored output names.
    scores : ndarray of shape (n,)
        Final image scores (after re-scoring), higher is more anomalous.
    labels : ndarray of shape (n,)
        -1 anomalous, 1 normal.
    detector_scores : ndarray of shape (n,)
        Image scores of the detector before re-scoring (``msm_score``).
    threshold : float
        The score above which an image is anomalous.
    anomaly_maps : ndarray of shape (n, H, W)
        Anomaly maps at the model input size (``input_size``).
    original_sizes : sequence of (int, int)
        (height, width) of each image file, upright.
    input_size : (int, int)
        Model input (height, width).
    crop_mode : str, default="auto"
        How the images were fitted to the input
        (``ViTPatchTransformer(crop_mode=...)``): maps and masks are put back
        by its inverse, and what it cut away is reported.
    masks : ndarray of shape (n, H, W) or sequence of 2-D arrays, optional
        Binary anomaly masks per image, at the input size or at the image's
        original size (nonzero = anomalous); written as PNGs and outlined on
        the overlays.
    settings : dict
        The options of the run, recorded in ``summary.json``.
    timings : dict
        Seconds per stage, recorded in ``summary.json``.
    skipped : sequence of (str, str)
        (name, reason) of the images left out as unreadable.
    pvalues : ndarray of shape (n,), optional
        Conformal p-values against known-good parts (a calibrated model, or
        a batch scored with references): the ``pvalue`` column.
    decision : dict, optional
        How the labels were decided (rule, level, calibration size), in
        ``summary.json`` and the report.
    drift : dict, optional
        The drift alarm over the new images in name order
        (:meth:`~sklearn_musc.DriftMonitor.summary`).
    """

    paths: Sequence
    names: Sequence[str]
    scores: np.ndarray
    labels: np.ndarray
    detector_scores: np.ndarray
    threshold: float
    anomaly_maps: np.ndarray
    original_sizes: Sequence[Tuple[int, int]]
    input_size: Tuple[int, int]
    crop_mode: str = "auto"
    masks: Optional[Sequence] = None
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    skipped: Sequence[Tuple[str, str]] = ()
    pvalues: Optional[np.ndarray] = None
    decision: Optional[dict] = None
    drift: Optional[dict] = None

    def __post_init__(self):
        n = len(self.paths)
        self.paths = [Path(p) for p in self.paths]
        self.names = [str(s) for s in self.names]
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels).reshape(-1)
        self.detector_scores = np.asarray(self.detector_scores, dtype=np.float64).reshape(-1)
        self.anomaly_maps = np.asarray(self.anomaly_maps, dtype=np.float32)
        self.original_sizes = [(int(h), int(w)) for h, w in self.original_sizes]
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.threshold = float(self.threshold)
        lengths = {len(self.names), len(self.scores), len(self.labels), len(self.detector_scores),
                   len(self.anomaly_maps), len(self.original_sizes)}
        if lengths != {n}:
            raise ValueError(f"every per-image field of ScoreResults must have {n} entries")
        if self.anomaly_maps.ndim != 3 or self.anomaly_maps.shape[1:] != self.input_size:
            raise ValueError(
                f"anomaly_maps must have shape (n, {self.input_size[0]}, {self.input_size[1]}) "
                f"(the input size), got {self.anomaly_maps.shape}"
            )
        if self.pvalues is not None:
            self.pvalues = np.asarray(self.pvalues, dtype=np.float64).reshape(-1)
            if len(self.pvalues) != n:
                raise ValueError(f"pvalues must hold one p-value per image ({n}), got {len(self.pvalues)}")
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"masks must hold one mask per image ({n}), got {len(self.masks)}")
        self.skipped = [(str(a), str(b)) for a, b in self.skipped]

    @property
    def n_anomalous(self):
        return int((self.labels == -1).sum())


def output_names(names):
    """The mirrored output name of each image; an error when two would collide."""
    seen = {}
    for name in names:
        key = name.casefold()  # also distinct on case-insensitive file systems
        if key in seen:
            raise InputError(
                f"images {seen[key]!r} and {name!r} would get the same output files; rename one"
            )
        seen[key] = name
    return list(names)


def _crop_summary(results, per_image):
    """What the fit to the model input cut away: ``cut_away`` of each image entry, and the batch's totals."""
    cut = [dropped_fraction(size, results.input_size, results.crop_mode) for size in results.original_sizes]
    pixels = [h * w for h, w in results.original_sizes]
    for entry, share in zip(per_image, cut):
        entry["cut_away"] = round(share, 6)
    total = sum(s * p for s, p in zip(cut, pixels)) / max(1, sum(pixels))
    return {"mode": results.crop_mode, "images_cut": sum(s > 0 for s in cut), "pixels_cut": round(total, 6)}


# --------------------------------------------------------------------------- overlays


def _mask_png(mask, original_size, input_size, crop_mode="auto"):
    """A mask of the run (at the input size, or already at the image's) as the L image (0/255) it is saved as."""
    mask = np.asarray(mask)
    if mask.shape == tuple(original_size):
        full = mask > 0
    elif mask.shape == tuple(input_size):
        full = masks_to_original([mask], [original_size], input_size, crop_mode=crop_mode)[0]
    else:
        raise ValueError(
            f"a mask must have the input size {tuple(input_size)} or the image's size "
            f"{tuple(original_size)}, got {mask.shape}"
        )
    return Image.fromarray(full.astype(np.uint8) * 255)


# --------------------------------------------------------------------------- folder


def _versions():
    import joblib
    import PIL
    import sklearn
    import torch

    from .. import __version__

    versions = {"sklearn_musc": __version__, "python": platform.python_version(),
                "numpy": np.__version__, "torch": torch.__version__, "scikit-learn": sklearn.__version__,
                "pillow": PIL.__version__, "joblib": joblib.__version__}
    for module, name in (("timm", "timm"), ("open_clip", "open_clip_torch")):
        mod = sys.modules.get(module)
        if mod is not None:
            versions[name] = getattr(mod, "__version__", "unknown")
    return versions


def _finite(x):
    x = float(x)
    return x if np.isfinite(x) else None


class OutputFolder:
    """The output folder of a scoring run.

    Parameters
    ----------
    path : path
        The folder (created when missing).
    overwrite : bool, default=False
        Replace an earlier run's outputs (removing the files it wrote) instead
        of refusing to mix with them.
    log : file, default=sys.stderr
        Where progress and warnings go.
    """

    def __init__(self, path, overwrite=False, log=None):
        self.path = Path(path)
        self.overwrite = overwrite
        self.log = log if log is not None else sys.stderr

    # ------------------------------------------------------------------ checks

    def earlier_run(self):
        """The files of an earlier run in the folder (from its manifest, or the known names)."""
        manifest = self.path / RUN_MANIFEST
        if manifest.is_file():
            try:
                listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
                return [f for f in listed if isinstance(f, str)], True
            except (ValueError, KeyError, TypeError, OSError):
                return list(TOP_FILES), True
        found = [name for name in TOP_FILES if (self.path / name).exists()]
        found += [d for d in DATA_DIRS if (self.path / d).is_dir() and any((self.path / d).iterdir())]
        return found, False

    def check(self):
        """Before any model runs: the folder is usable and holds no earlier run (or may replace it)."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path} exists and is not a folder; give a folder path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f"{_STAGE_PREFIX}{os.getpid()}-probe"
            probe.mkdir(exist_ok=True)
            (probe / "x").write_bytes(b"")
            shutil.rmtree(probe)
        except OSError as exc:
            raise InputError(f"cannot write to the output folder {self.path}: "
                             f"{exc.strerror or exc}; choose another --out") from None
        found, _ = self.earlier_run()
        if found and not self.overwrite:
            shown = [f for f in TOP_FILES + DATA_DIRS if f in found] or sorted(found)
            raise InputError(
                f"{self.path} holds the outputs of an earlier run ({', '.join(shown[:3])}"
                f"{', ...' if len(found) > 3 else ''}); use --overwrite to replace them, or "
                "choose another --out"
            )

    # ------------------------------------------------------------------ writing

    def write(self, results, overlays=True, maps=True, report=True, command=None):
        """Write every output of ``results``; returns the list of written files (relative)."""
        self.check()
        names = output_names(results.names)
        stage = self.path / f"{_STAGE_PREFIX}{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
        try:
            files = self._write_stage(stage, results, names, overlays, maps, report, command)
            self._commit(stage, files)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return files

    def _write_stage(self, stage, results, names, overlays, maps, report, command):
        files = ["scores.csv"]
        n = len(names)
        with open(stage / "scores.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            pvalues = results.pvalues
            writer.writerow(["path", "score", "label", "msm_score"] + ([] if pvalues is None else ["pvalue"]))
            for i, (name, score, label, raw) in enumerate(zip(names, results.scores, results.labels,
                                                              results.detector_scores)):
                writer.writerow([name, f"{score:.6f}", "anomalous" if label == -1 else "normal", f"{raw:.6f}"]
                                + ([] if pvalues is None else [f"{pvalues[i]:.6f}"]))
        per_image = [dict(path=name, score=_finite(s), label="anomalous" if lab == -1 else "normal",
                          msm_score=_finite(r), original_size=list(size), overlay=None, map=None,
                          mask=None)
                     for name, s, lab, r, size in zip(names, results.scores, results.labels,
                                                      results.detector_scores, results.original_sizes)]
        if pvalues is not None:
            for entry, p in zip(per_image, pvalues):
                entry["pvalue"] = _finite(p)
        crop = _crop_summary(results, per_image)
        maps_ = results.anomaly_maps
        vmin, vmax = (float(maps_.min()), float(maps_.max())) if maps_.size else (0.0, 0.0)
        if maps:
            for i, name in enumerate(names):
                rel = f"maps/{name}.npy"
                target = stage / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, maps_[i].astype(np.float32, copy=False))
                per_image[i]["map"] = rel
                files.append(rel)
        if overlays or results.masks is not None:
            step = max(1, n // 10)
            for i, name in enumerate(names):
                mask = None
                if results.masks is not None:
                    mask = _mask_png(results.masks[i], results.original_sizes[i], results.input_size,
                                     results.crop_mode)
                    rel = f"masks/{name}.png"
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    mask.save(stage / rel, format="PNG")
                    per_image[i]["mask"] = rel
                    files.append(rel)
                if overlays:
                    image, _ = load_image(str(results.paths[i]), str(results.paths[i]))
                    overlay = Image.fromarray(anomaly_map_rgb(
                        image, maps_[i], vmin, vmax, mask=None if mask is None else np.asarray(mask),
                        input_size=results.input_size, crop_mode=results.crop_mode))
                    del image
                    rel = f"overlays/{name}.png"
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    overlay.save(stage / rel, format="PNG")
                    del overlay
                    per_image[i]["overlay"] = rel
                    files.append(rel)
                if overlays and ((i + 1) % step == 0 or i + 1 == n):
                    print(f"  writing overlays {i + 1}/{n}", file=self.log, flush=True)
        summary = {
            "format": "sklearn-musc score summary",
            "format_version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(command) if command is not None else None,
            "versions": _versions(),
            "settings": results.settings,
            "timings_s": {k: round(float(v), 3) for k, v in results.timings.items()},
            "n_images": n,
            "n_anomalous": results.n_anomalous,
            "threshold": _finite(results.threshold),
            "input_size": list(results.input_size),
            "crop": crop,
            "colour_scale": [vmin, vmax],
            "images": per_image,
            "skipped": [{"path": a, "reason": b} for a, b in results.skipped],
        }
        if results.decision is not None:
            summary["decision"] = results.decision
        if results.drift is not None:
            summary["drift"] = results.drift
        if report:
            from .report import render_report

            (stage / "report.html").write_text(render_report(summary), encoding="utf-8")
            files.append("report.html")
        files.append("summary.json")
        summary["files"] = sorted(files)
        (stage / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False),
                                            encoding="utf-8")
        return files

    def _commit(self, stage, files):
        old, has_manifest = self.earlier_run()
        if old:
            self._remove_earlier(old, has_manifest)
        manifest = {"files": sorted(files) + [RUN_MANIFEST]}
        tmp = stage / RUN_MANIFEST
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        os.replace(tmp, self.path / RUN_MANIFEST)  # first: the folder is claimed before files arrive
        for rel in sorted(files, key=lambda f: f == "summary.json"):  # summary.json last
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, target)
        self._warn_strays(set(files))

    def _remove_earlier(self, old, has_manifest):
        root = self.path.resolve()
        removed = 0
        for rel in old:
            target = (self.path / rel)
            try:
                inside = target.resolve().is_relative_to(root) and target.resolve() != root
            except (OSError, ValueError):
                inside = False
            if not inside or rel in DATA_DIRS:
                continue
            if target.is_file() or target.is_symlink():
                target.unlink()
                removed += 1
        for d in DATA_DIRS:  # drop folders the removal emptied
            top = self.path / d
            if top.is_dir():
                for folder, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
                    try:
                        os.rmdir(folder)
                    except OSError:
                        pass
        if removed:
            print(f"removed {removed} files of the earlier run in {self.path}", file=self.log)
        if not has_manifest:
            print(f"warning: {self.path} held outputs of an older version without a list of its "
                  "files; only scores.csv, summary.json and report.html were replaced",
                  file=self.log)

    def _warn_strays(self, files):
        strays = []
        for d in DATA_DIRS:
            top = self.path / d
            if not top.is_dir():
                continue
            for folder, _, names in os.walk(top):
                for name in names:
                    rel = (Path(folder) / name).relative_to(self.path).as_posix()
                    if rel not in files:
                        strays.append(rel)
        if strays:
            print(f"warning: {len(strays)} files in {self.path} were not written by this run "
                  f"(e.g. {strays[0]}); they are not part of its results", file=self.log)
