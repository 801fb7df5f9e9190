"""The command line's options: their types, their checks and the input images they name.

Everything here runs before any model does. The rules about parameters are
the estimators' own (the checks of :mod:`sklearn_musc._validation`, called
here with the option's name, and the estimators' ``check_grid`` and
``check_batch``, which the runs ask through :func:`ask`); what is added is
about files and folders.
"""

import argparse
import sys
from pathlib import Path

from .._backbones import check_weights_file, resolve_backbone
from .._device import resolve_device
from .._validation import check_contamination, check_int_list, check_size
from ..conformal import check_level
from ..features import TURNS
from ..geometry import CROP_MODES
from ..images import IMAGE_SUFFIXES
from ..presets import PRESETS, STEPS, available_presets, make_musc_pipeline, pretrained_from_options
from .errors import InputError, one_line
from .inputs import check_readable, collect_images, display_name
from .outputs import output_names

PRESET = PRESETS["default"]  # the backbone options' defaults (the demo has its own backbone and size)
# options whose default is the --preset's value
_PRESET_OPTIONS = {"r_list": "lnamd__r_list", "k_list": "rscin__k_list", "crop_mode": "vit__crop_mode"}

# the options that define a model: fixed by --model, so refused beside it
MODEL_OPTIONS = ("backbone", "pretrained", "weights", "image_size", "crop_mode", "layers", "turns", "preset",
                 "r_list", "k_list", "contamination", "max_subset_size")
MODEL_STEPS = list(STEPS)


def _image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW in positive pixels, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _turns(text):
    """``--turns rot90,flip``: names of ViTPatchTransformer's ``turns``, as a tuple."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TURNS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"must be comma-separated names among {', '.join(TURNS)}, got {text!r}")
    return names


def _contamination(text):
    """``--contamination``: the estimators' own rule (check_contamination), worded for the option."""
    try:
        return check_contamination(text if text == "auto" else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a share in (0, 0.5], got {text!r}") from None


def level(name):
    """An option's type for a level in (0, 1) (``--alpha``, ``--fdr``, ``--drift-level``): the library's rule."""

    def parse(text):
        try:
            return check_level(float(text), name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None

    return parse


def add_common_options(parser):
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def add_model_options(parser, *, backbone, image_size):
    g = parser.add_argument_group("model")
    g.add_argument("--backbone", default=backbone, help=f"open_clip:NAME or timm:NAME (default {backbone})")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag (downloaded once into the library's cache; default: the backbone's "
                        "own), or 'none' for random weights")
    g.add_argument("--weights", type=Path, default=None, help="local weights file (offline); overrides --pretrained")
    g.add_argument("--image-size", type=_image_size, default=image_size, help="N or HxW (default %(default)s)")
    g.add_argument("--crop-mode", choices=CROP_MODES, default=None,
                   help="how an image is fitted to the model input: centre crop, border (letterbox), squash, or "
                        "auto (the crop for the input's aspect ratio, else squash: every pixel seen); default: "
                        "the preset's, auto ('center' for the paper-* presets)")
    g.add_argument("--layers", type=int, nargs="+", default=None, help="0-based blocks (default: 4 stage ends)")
    g.add_argument("--turns", type=_turns, default=None,
                   help="turned copies of every image as extra scorers of the others, for parts lying at any "
                        f"angle: comma-separated, among {', '.join(TURNS)} (each copy: one more ViT forward and "
                        "about twice the scoring's products; default: none)")
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
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bars (stage lines and the time estimate are still shown)")
    o.add_argument("--no-overlays", action="store_true", help="do not write heat-map PNGs")
    add_common_options(parser)


def option(args, name):
    """A model option's value, or the ``--preset``'s when it was left out (``r_list``, ``k_list``, ``crop_mode``)."""
    value = getattr(args, name)
    if value is None and name in _PRESET_OPTIONS:
        value = PRESETS[args.preset][_PRESET_OPTIONS[name]]
        return list(value) if isinstance(value, tuple) else value
    return value


def build_pipeline(args, pretrained, novelty=False):
    """The ``--preset`` (default: "default") with the command-line options (``novelty``: a model for ``fit``)."""
    return make_musc_pipeline(
        args.preset,
        vit__backbone=args.backbone, vit__pretrained=pretrained, vit__image_size=args.image_size,
        vit__crop_mode=option(args, "crop_mode"),
        vit__layers=args.layers, vit__turns=getattr(args, "turns", None), vit__device=args.device,
        vit__batch_size=args.batch_size,
        vit__progress=not args.no_progress, lnamd__progress=not args.no_progress,
        msm__progress=not args.no_progress,
        lnamd__r_list=tuple(option(args, "r_list")), lnamd__device=args.device,
        lnamd__dtype=getattr(args, "features_dtype", "float32"),
        msm__contamination=args.contamination, msm__device=args.device,
        msm__max_subset_size=args.max_subset_size, msm__novelty=novelty,
        msm__alpha=getattr(args, "alpha", None), msm__fdr=getattr(args, "fdr", None),
        rscin__k_list=tuple(option(args, "k_list")), rscin__contamination=args.contamination, rscin__novelty=novelty,
    )


def ask(check, *args, options=None, **kwargs):
    """Run a check the library owns; its error becomes a one-line InputError (prefixed with ``options``).

    The estimators check their own parameters (``check_grid``,
    ``check_batch``, the parameter tables): the command line asks them before
    the long computation and only says which options fed the check.
    """
    try:
        return check(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{options}: {one_line(exc)}" if options else one_line(exc)) from None


def check_options(args):
    """Every option that can be checked without images or a model; InputError when one is bad."""
    ask(check_int_list, option(args, "r_list"), "--r-list", odd=True)
    ask(check_int_list, option(args, "k_list"), "--k-list")
    ask(check_size, args.image_size, "--image-size")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, got {args.batch_size}")
    ask(resolve_device, args.device)
    ask(resolve_backbone, args.backbone)
    if args.weights is not None:
        try:
            check_weights_file(args.weights)
        except OSError as exc:
            raise InputError(f"--weights: {exc}") from None
        except ValueError:
            raise InputError(f"--weights {args.weights} is neither a safetensors file nor a "
                             "PyTorch checkpoint; give the backbone's state dict") from None


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
    return paths, names, skipped


def pretrained(args):
    """The ``pretrained`` value of the options.

    --weights FILE, else --pretrained TAG ('none': random init), else the backbone's default tag.
    """
    return pretrained_from_options(args.pretrained, args.weights)
