"""Named settings of the whole MuSc pipeline, and the one function that builds it.

``PRESETS`` maps each preset name to the ``step__param`` values it sets
(read-only); every parameter it does not name keeps its estimator's default.

- ``"default"``: the library's defaults after the backbone (MuSc-V2's
  similarity-weighted aggregation, the MSM interval ``topmin_max`` 0.2 and
  RsCIN on MuSc-V2's salient feature with windows 1, 7, chosen by the study
  in ``benchmarks/RESULTS.md``, "Beyond the paper") on the paper's backbone, ViT-L-14-336 at 518 px, with
  ``vit__pretrained=True`` (the backbone's own default weights, which for
  ViT-L-14-336 are the ``"openai"`` ones), so that overriding only
  ``vit__backbone`` still names valid weights; images fitted with
  ``crop_mode="auto"`` (whole images whatever their shape). The command
  line's defaults.
- ``"paper-mvtec"``, ``"paper-visa"``, ``"paper-btad"``: the MuSc paper's
  setting (open_clip ViT-L-14-336 with the ``"openai"`` weights at 518 px,
  images centre-cropped (``crop_mode="center"``), LNAMD ``r_list`` 1, 3, 5 with mean aggregation, ``topmin_max`` 0.3, no
  repeated-defect filter, RsCIN on the image embedding) with the authors'
  RsCIN windows for the dataset: ``k_list`` 1, 8, 9 on VisA, else 1, 2, 3.
  They reproduce the paper's table whatever the estimators' defaults.

All of them seed the two steps that draw random numbers (``vit__random_state``
and ``msm__random_state`` are 0), so that a run can be repeated.

The command line, ``reproduction/reproduce.py`` and the examples build their
pipeline with :func:`make_musc_pipeline`, so these settings are written down
here only. :func:`make_musc_pipeline` and :func:`available_presets` are also
importable from ``sklearn_musc``.
"""

from types import MappingProxyType

from sklearn.pipeline import Pipeline

from ._backbones import resolve_backbone, resolve_pretrained
from .aggregation import LNAMDTransformer
from .features import ViTPatchTransformer
from .rescoring import RsCINRescorer
from .scoring import MutualScoringDetector

STEPS = ("vit", "lnamd", "msm", "rscin")

__all__ = ["PRESETS", "available_presets", "make_musc_pipeline", "pretrained_from_options", "resolve_weights"]

# The paper's setting (docs/algorithm.rst): open_clip ViT-L-14-336 with the
# "openai" weights at 518 px, images centre-cropped, LNAMD degrees 1, 3, 5 averaged, the interval
# average over the lowest 30 % of the other images, RsCIN on the image
# embedding; random ViT weights and the split into subsets seeded. Every
# setting the paper fixes is written here, so that a change of an estimator's
# default never changes the reproduction.
_PAPER = {
    "vit__backbone": "open_clip:ViT-L-14-336",
    "vit__pretrained": "openai",
    "vit__image_size": 518,
    "vit__crop_mode": "center",
    "vit__layers": None,
    "vit__random_state": 0,
    "lnamd__r_list": (1, 3, 5),
    "lnamd__aggregation": "mean",
    "msm__topmin_min": 0.0,
    "msm__topmin_max": 0.3,
    "msm__repeat_ratio": None,
    "msm__random_state": 0,
    "rscin__k_list": (1, 2, 3),
    "rscin__embedding": "image",
}

# The library's defaults after the backbone (benchmarks/RESULTS.md, "Beyond
# the paper"), written out for the same reason.
_DEFAULT = {
    **_PAPER,
    "vit__pretrained": True,
    "vit__crop_mode": "auto",
    "lnamd__aggregation": "similarity",
    "msm__topmin_max": 0.2,
    "rscin__k_list": (1, 7),
    "rscin__embedding": "auto",
}

# Described in the module's docstring. Read-only views, so that a caller
# cannot change a preset for the rest of the process.
PRESETS = MappingProxyType({
    "default": MappingProxyType(_DEFAULT),
    # The RsCIN windows are the one setting the authors' code changes per
    # dataset (docs/algorithm.rst, "Re-scoring (RsCIN)").
    "paper-mvtec": MappingProxyType(dict(_PAPER)),
    "paper-visa": MappingProxyType({**_PAPER, "rscin__k_list": (1, 8, 9)}),
    "paper-btad": MappingProxyType(dict(_PAPER)),
})


def available_presets():
    """The names :func:`make_musc_pipeline` accepts, in a stable order.

    Returns
    -------
    names : tuple of str
    """
    return tuple(PRESETS)


def make_musc_pipeline(preset="default", **overrides):
    """The four-step MuSc pipeline with a named preset's settings.

    Parameters
    ----------
    preset : str, default="default"
        One of :func:`available_presets`; the values each one sets are in
        ``sklearn_musc.presets.PRESETS`` (see :mod:`sklearn_musc.presets`).
    **overrides
        Parameters of the steps named ``step__param``, as for
        :meth:`sklearn.pipeline.Pipeline.set_params`: the steps are ``vit``
        (:class:`~sklearn_musc.ViTPatchTransformer`), ``lnamd``
        (:class:`~sklearn_musc.LNAMDTransformer`), ``msm``
        (:class:`~sklearn_musc.MutualScoringDetector`) and ``rscin``
        (:class:`~sklearn_musc.RsCINRescorer`). They are applied after the preset's values,
        so they win. Settings that several steps have (``device``,
        ``contamination``, ``novelty``) are given to each step that should
        use them.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        Unfitted, steps ``[("vit", ...), ("lnamd", ...), ("msm", ...),
        ("rscin", ...)]``.

    Raises
    ------
    ValueError
        For an unknown preset, an override not named ``step__param`` with one
        of the four steps, or a parameter the step does not have.

    See Also
    --------
    available_presets : the preset names.

    Examples
    --------
    >>> from sklearn_musc import make_musc_pipeline
    >>> pipe = make_musc_pipeline("paper-visa", vit__device="cpu", msm__max_subset_size=200)
    >>> [name for name, _ in pipe.steps]
    ['vit', 'lnamd', 'msm', 'rscin']
    >>> pipe["rscin"].k_list, pipe["vit"].image_size, pipe["msm"].max_subset_size
    ((1, 8, 9), 518, 200)
    >>> make_musc_pipeline("paper")
    Traceback (most recent call last):
    ...
    ValueError: unknown preset 'paper'; valid presets: 'default', 'paper-mvtec', 'paper-visa', 'paper-btad'
    """
    if not isinstance(preset, str) or preset not in PRESETS:
        valid = ", ".join(repr(name) for name in PRESETS)
        raise ValueError(f"unknown preset {preset!r}; valid presets: {valid}")
    for key in overrides:
        step, sep, _ = key.partition("__")
        if not sep or step not in STEPS:
            raise ValueError(f"override {key!r} must be named step__param with step one of "
                             f"{', '.join(STEPS)} (e.g. vit__device)")
    pipe = Pipeline([
        ("vit", ViTPatchTransformer()),
        ("lnamd", LNAMDTransformer()),
        ("msm", MutualScoringDetector()),
        ("rscin", RsCINRescorer()),
    ])
    return pipe.set_params(**{**PRESETS[preset], **overrides})


def pretrained_from_options(pretrained=None, weights=None):
    """The ``ViTPatchTransformer(pretrained=...)`` value of the command-line options.

    Shared by the command line and ``reproduction/reproduce.py``, whose
    ``--pretrained TAG`` and ``--weights FILE`` options mean the same.

    Parameters
    ----------
    pretrained : str or None, default=None
        A pretrained tag, or ``"none"`` (any case) for random weights; None
        when the option was not given.
    weights : str, path or None, default=None
        A local weights file; it wins over ``pretrained``.

    Returns
    -------
    value : str, True or None
        The file (as given), else the tag, else None for ``"none"``, else
        True: the backbone's own default weights (not a fixed tag, which
        would not exist for every backbone).

    Examples
    --------
    >>> from sklearn_musc.presets import pretrained_from_options
    >>> pretrained_from_options(), pretrained_from_options("None"), pretrained_from_options("openai", "w.pt")
    (True, None, 'w.pt')
    """
    if weights is not None:
        return str(weights)
    if pretrained is None:
        return True
    return None if pretrained.lower() == "none" else pretrained


def resolve_weights(backbone, pretrained=True):
    """Which backbone and weights ``ViTPatchTransformer(backbone, pretrained=...)`` loads, without loading them.

    The same resolution as the transformer's ``fit`` (names, tags, files), so
    a record of a run (``reproduction/reproduce.py``) says what was loaded.

    Parameters
    ----------
    backbone : str
        ``"open_clip:NAME"``, ``"timm:NAME"`` or a bare name.
    pretrained : str, path, True or None, default=True
        As ``ViTPatchTransformer(pretrained=...)`` (see :func:`pretrained_from_options`).

    Returns
    -------
    backbone : str
        ``"family:name"``, as ``ViTPatchTransformer.backbone_``.
    kind : {"file", "tag", "none"}
        A local weights file, a pretrained tag, or random initialisation.
    value : pathlib.Path, str, True or None
        The absolute path of the file; the tag (True: the backbone's own
        default); None.

    Examples
    --------
    >>> from sklearn_musc.presets import resolve_weights
    >>> resolve_weights("timm:vit_small_patch14_dinov2", None)
    ('timm:vit_small_patch14_dinov2', 'none', None)
    """
    family, name = resolve_backbone(backbone)
    kind, value = resolve_pretrained(family, name, pretrained)
    return f"{family}:{name}", kind, value
