"""The ``sklearn-musc`` command: its parser, the dispatch to a run and the exit status of each error."""

import argparse
import sys
from pathlib import Path

from .. import __version__
from .demo import DEMO_BACKBONE, run_demo
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, InputError, RunFailed, WeightsUnavailable
from .errors import one_line
from .options import MODEL_OPTIONS, PRESET, add_model_options, level, pretrained
from .run import DEFAULT_FUSION, DEFAULT_MODALITY, FUSIONS, MODALITIES, run_fit, run_score, run_score_model

EPILOG = """\
outputs (in --out): scores.csv, summary.json, report.html, overlays/<name>.png,
maps/<name>.npy (float32 at the model input size), masks/ when masks exist;
<name> is the image's path under DIR, suffix kept (sub/x.jpg -> overlays/sub/x.jpg.png);
with point clouds, <name> is the rgb image's (cut/rgb/000.png), drawn on it.
Hidden files and folders, the output folder and earlier runs' output folders are
never read as input. A folder holding an earlier run is refused unless --overwrite.

exit status: 0 success; 2 bad usage or input (an option, the input or output
folder, an unreadable image or point cloud, the weights file or backbone name) -- nothing was
written; 3 failure while running (weights not available offline, out
of memory, any other error; run again with --debug for the traceback);
130 interrupted (Ctrl-C): no output file is left half written.
"""


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
    decide = score.add_argument_group("decisions against known-good parts (README: Decisions you can trust)")
    decide.add_argument("--references", metavar="REFS", nargs="+", default=None,
                        help="without --model: known-good images that join the batch's scorers and calibrate "
                             "it (a p-value per image in scores.csv)")
    decide.add_argument("--fdr", type=level("fdr"), default=None,
                        help="with --references: label the batch by Benjamini-Hochberg at this false-discovery "
                             "level (expected share of good parts among the flagged ones)")
    decide.add_argument("--drift-level", type=level("drift level"), default=0.01,
                        help="with --model: false-alarm level of the drift alarm over the new images, in name "
                             "order (default %(default)s)")
    three = score.add_argument_group(
        "3D (a folder with point clouds: MVTec 3D-AD's <defect>/{rgb,xyz,gt}/, or xyz TIFFs beside the images "
        "of the same stem)")
    three.add_argument("--modality", choices=MODALITIES, default=None,
                       help=f"what is scored: the rgb images, the point clouds (3d), or both fused (default "
                            f"{DEFAULT_MODALITY} when DIR holds point clouds, else rgb)")
    three.add_argument("--fusion", choices=FUSIONS, default=None,
                       help=f"with --modality rgb+3d: add the two anomaly maps (sum), or MuSc-V2's cross-modal "
                            f"enhancement (cae) (default {DEFAULT_FUSION})")
    add_model_options(score, backbone=PRESET["vit__backbone"], image_size=PRESET["vit__image_size"])
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
    fit.add_argument("--alpha", type=level("alpha"), default=None,
                     help="label new images at this false-alarm rate, calibrated on the references (which "
                          "must be good parts): a good part is flagged with probability at most ALPHA; "
                          "needs at least 1/ALPHA - 1 references")
    fit.add_argument("--out", default=None, help=argparse.SUPPRESS)
    add_model_options(fit, backbone=PRESET["vit__backbone"], image_size=PRESET["vit__image_size"])
    demo = sub.add_parser("demo", help="generate a small synthetic batch with defects and score it",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="musc-demo",
                      help="folder for the images and results, replaced on each run (default %(default)s)")
    add_model_options(demo, backbone=DEMO_BACKBONE, image_size=224)
    return parser


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
            if args.references is not None or args.fdr is not None:
                raise InputError("--references and --fdr calibrate a batch scored without --model; a model's "
                                 "pool is its calibration (fit it with --alpha)")
            if args.modality is not None or args.fusion is not None:
                raise InputError("--modality and --fusion are for a batch scored without --model (a model "
                                 "scores rgb images)")
            run_score_model(args)
        else:
            if len(args.targets) != 1 or Path(args.targets[0]).is_file():
                raise InputError("without --model, score takes one folder: its images score each other "
                                 "(to score single files, fit a model first: sklearn-musc fit REFS --model FILE)")
            if args.fdr is not None and args.references is None:
                raise InputError("--fdr calibrates the batch against known-good parts: give them with "
                                 "--references REFS")
            run_score(args, args.targets[0], pretrained(args))
        return EXIT_OK
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("sklearn-musc: interrupted; no output file was left half written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except WeightsUnavailable as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except RunFailed as exc:  # an error while computing: the library's own message, exit 3
        error = exc.__cause__
        if args.debug:
            raise error from None
        plain = isinstance(error, (ValueError, FileNotFoundError, IsADirectoryError))
        named = "" if plain else f"{type(error).__name__}: "
        print(f"sklearn-musc: error: {named}{one_line(error)} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
    except (ValueError, FileNotFoundError, IsADirectoryError) as exc:
        # The library's own checks before computing (backbone, layers, weights file): bad input.
        if args.debug:
            raise
        print(f"sklearn-musc: error: {one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"sklearn-musc: error: out of memory: {one_line(exc)}; try --max-subset-size, a smaller "
              "--image-size or --batch-size (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if args.debug:
            raise
        print(f"sklearn-musc: error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILURE
