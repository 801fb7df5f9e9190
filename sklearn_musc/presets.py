"""Named settings of the whole MuSc pipeline, and the one function that builds it.

The command line, ``reproduction/reproduce.py`` and the examples all build
their pipeline with :func:`make_musc_pipeline`, so the paper's settings (and
the per-dataset RsCIN windows of the authors' code) are written down here
only.
"""

from types import MappingProxyType

from sklearn.pipeline import Pipeline

from .aggregation import LNAMDTransformer
from .features import ViTPatchTransformer
from .rescoring import RsCINRescorer
from .scoring import MutualScoringDetector

STEPS = ("vit", "lnamd", "msm", "rscin")

# The paper's setting (docs/algorithm.rst): open_clip ViT-L-14-336 with the
# "openai" weights at 518 px, LNAMD degrees 1, 3, 5, the interval average over
# the lowest 30 % of the other images. random_state 0 on the two steps that
# draw random numbers (random ViT weights, the split into subsets), so that a
# run can be repeated.
_PAPER = {
    "vit__backbone": "open_clip:ViT-L-14-336",
    "vit__pretrained": "openai",
    "vit__image_size": 518,
    "vit__layers": None,
    "vit__random_state": 0,
    "lnamd__r_list": (1, 3, 5),
    "msm__topmin_min": 0.0,
    "msm__topmin_max": 0.3,
    "msm__random_state": 0,
    "rscin__k_list": (1, 2, 3),
}

PRESETS = MappingProxyType({
    # The paper's setting with the backbone's own default weights, so that
    # overriding only ``vit__backbone`` still names valid weights (for
    # ViT-L-14-336 they are the "openai" ones). The command line's defaults.
    "default": MappingProxyType({**_PAPER, "vit__pretrained": True}),
    # The RsCIN windows are the one setting the authors' code changes per
    # dataset (docs/algorithm.rst, "Re-scoring (RsCIN)").
    "paper-mvtec": MappingProxyType(dict(_PAPER)),
    "paper-visa": MappingProxyType({**_PAPER, "rscin__k_list": (1, 8, 9)}),
    "paper-btad": MappingProxyType(dict(_PAPER)),
})
"""Preset name -> the ``step__param`` values it sets (read-only).

``"default"``: the paper's setting with ``pretrained=True`` (the backbone's
own default weights), what the command line uses. ``"paper-mvtec"``,
``"paper-visa"``, ``"paper-btad"``: the paper's setting on each dataset
(open_clip ViT-L-14-336 with the ``"openai"`` weights, 518 px, ``r_list`` 1, 3, 5,
``topmin_max`` 0.3), with the authors' RsCIN windows for the dataset
(``k_list`` 1, 8, 9 on VisA, else 1, 2, 3). Every parameter not named keeps
its estimator's default.
"""


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
        One of :func:`available_presets` (the values each one sets are in
        ``sklearn_musc.presets.PRESETS``).
    **overrides
        Parameters of the steps named ``step__param``, as for
        :meth:`sklearn.pipeline.Pipeline.set_params`: the steps are ``vit``
        (:class:`ViTPatchTransformer`), ``lnamd`` (:class:`LNAMDTransformer`),
        ``msm`` (:class:`MutualScoringDetector`) and ``rscin``
        (:class:`RsCINRescorer`). They are applied after the preset's values,
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
    available_presets : the names of the presets.

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
