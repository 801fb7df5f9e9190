"""The scikit-learn contract of the four estimators (issue 12).

``parametrize_with_checks`` runs scikit-learn's common checks. The
estimators declare what they take in their tags: images, token arrays and
feature sets are not tables (``input_tags.two_d_array=False``), so for
ViTPatchTransformer, LNAMDTransformer and MutualScoringDetector scikit-learn
runs only ``check_estimator_cloneable`` and skips the checks that feed
tables (with a ``SkipTestWarning``); the API checks that need no table are
run on them below. RsCINRescorer takes a 2-D table of embeddings, but its
``fit`` needs the image scores as well (``scores=``), which no check passes:
those checks are listed in ``EXPECTED_FAILED_CHECKS`` with the reason.
"""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.exceptions import SkipTestWarning
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks

from sklearn_musc import (CrossModalDetector, LNAMDTransformer, MultimodalTransformer, MutualScoringDetector,
                          PointCloudPatchTransformer, RsCINRescorer, ViTPatchTransformer)
from sklearn_musc._validation import validate_params

if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 6):
    pytest.skip("estimator tags and expected_failed_checks need scikit-learn >= 1.6", allow_module_level=True)

from sklearn.utils import get_tags  # noqa: E402  (scikit-learn >= 1.6)

TINY_VIT = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=28,
                backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), device="cpu", progress=False)


def _estimators():
    return [
        ViTPatchTransformer(**TINY_VIT),
        LNAMDTransformer(device="cpu"),
        MutualScoringDetector(device="cpu"),
        RsCINRescorer(),
        PointCloudPatchTransformer(device="cpu"),
        MultimodalTransformer(rgb=ViTPatchTransformer(**TINY_VIT), xyz=PointCloudPatchTransformer(device="cpu")),
        CrossModalDetector(device="cpu"),
    ]


_NEEDS_SCORES = (
    "RsCIN rescores image scores with image embeddings: fit needs the scores too "
    "(fit(embeddings, scores=...) or an ImageScores X), and the check fits on a table alone"
)
_RSCIN_EXPECTED_FAILED = {
    name: _NEEDS_SCORES
    for name in [
        "check_fit_score_takes_y",
        "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit",
        "check_estimators_dtypes",
        "check_complex_data",
        "check_dtype_object",
        "check_estimators_empty_data_messages",
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimator_sparse_tag",
        "check_estimator_sparse_array",
        "check_estimator_sparse_matrix",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_outliers_fit_predict",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_fit2d_1sample",
        "check_fit2d_1feature",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit_check_is_fitted",
        "check_n_features_in",
        "check_fit2d_predict1d",
    ]
}
_RSCIN_EXPECTED_FAILED["check_outlier_contamination"] = (
    "the check looks for scikit-learn's private Interval class in _parameter_constraints; ours are "
    "the package's own (sklearn_musc._validation), and contamination in (0, 0.5] is tested below"
)

EXPECTED_FAILED_CHECKS = {
    # Images, tokens and feature sets are not tables: scikit-learn skips every
    # check that needs one, so nothing is expected to fail.
    "ViTPatchTransformer": {},
    "LNAMDTransformer": {},
    "MutualScoringDetector": {},
    "RsCINRescorer": _RSCIN_EXPECTED_FAILED,
    "PointCloudPatchTransformer": {},
    "MultimodalTransformer": {},
    "CrossModalDetector": {},
}


with warnings.catch_warnings():  # the SkipTestWarning of the non-tabular estimators, said above
    warnings.simplefilter("ignore", SkipTestWarning)
    _common_checks = estimator_checks.parametrize_with_checks(
        _estimators(), expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS[type(est).__name__]
    )


@_common_checks
def test_sklearn_common_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        check(estimator)


# API checks that need no table: scikit-learn skips them for estimators whose
# input is not 2-D, so they are run here directly.
DATA_FREE_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_estimators_unfitted",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
@pytest.mark.parametrize("estimator", [e for e in _estimators() if not isinstance(e, RsCINRescorer)],
                         ids=lambda est: type(est).__name__)
def test_api_checks_without_tables(estimator, check):
    getattr(estimator_checks, check)(type(estimator).__name__, clone(estimator))


@pytest.mark.parametrize("estimator", [e for e in _estimators() if not isinstance(e, RsCINRescorer)],
                         ids=lambda est: type(est).__name__)
def test_check_estimator_skips_table_checks_instead_of_failing(estimator):
    """Issue 12: check_estimator crashed on the detector (transform without
    transformer tags) and ran tabular checks on image and token inputs."""
    with pytest.warns(SkipTestWarning, match="requires input"):
        results = estimator_checks.check_estimator(estimator, on_fail=None)
    assert {r["status"] for r in results} == {"passed"}


def test_tags_say_what_each_estimator_takes_and_is():
    vit, lnamd, msm, rscin, pc, union, cross = (get_tags(est) for est in _estimators())
    assert pc.input_tags.string and not pc.input_tags.two_d_array and pc.transformer_tags is not None
    assert union.input_tags.string and union.transformer_tags is not None
    assert cross.estimator_type == "outlier_detector" and not cross.input_tags.two_d_array
    for tags in (vit, lnamd, msm):
        assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array
    assert vit.input_tags.string  # paths
    assert rscin.input_tags.two_d_array  # embeddings
    assert vit.transformer_tags is not None and lnamd.transformer_tags is not None
    assert vit.estimator_type is None and lnamd.estimator_type is None
    assert msm.estimator_type == rscin.estimator_type == "outlier_detector"
    assert msm.transformer_tags is not None and msm.transformer_tags.preserves_dtype == []
    assert rscin.transformer_tags is None


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("cls", [ViTPatchTransformer, LNAMDTransformer, MutualScoringDetector, RsCINRescorer,
                                 PointCloudPatchTransformer, CrossModalDetector])
def test_parameters_are_keyword_only_and_all_in_the_table(cls):
    est = cls()
    assert sorted(type(est)._parameter_constraints) == sorted(est.get_params())
    first = next(iter(est.get_params()))
    with pytest.raises(TypeError):
        cls(est.get_params()[first])  # positional
    validate_params(est)  # the defaults satisfy the table


@pytest.mark.parametrize(
    "est",
    [
        LNAMDTransformer(device="cpu", batch_size=np.int64(2), r_list=np.array([1, 3])),
        MutualScoringDetector(device="cpu", topmin_min=np.float32(0.1), topmin_max=np.float64(0.5),
                              n_subsets=np.int32(1), radius=np.int64(1), contamination=np.float32(0.2),
                              threshold=np.float32(0.5), memory_budget=np.int64(2**28), novelty=np.bool_(True)),
        RsCINRescorer(k_list=(np.int64(1), np.int32(2)), threshold=np.float16(-0.5), contamination=np.float64(0.1)),
        ViTPatchTransformer(**dict(TINY_VIT, image_size=np.int64(28), batch_size=np.int64(2),
                                   layers=[np.int64(0)], random_state=np.int64(0))),
    ],
    ids=lambda est: type(est).__name__,
)
def test_numpy_numbers_are_accepted(est):
    validate_params(est)


def test_numpy_batch_size_runs(rng):
    from _helpers import make_tokens

    tokens = make_tokens(rng, n=5)
    out = LNAMDTransformer(device="cpu", batch_size=np.int64(2)).fit_transform(tokens)
    ref = LNAMDTransformer(device="cpu").fit_transform(tokens)
    np.testing.assert_array_equal(out.features, ref.features)


@pytest.mark.parametrize(
    "est, message",
    [
        (MutualScoringDetector(topmin_max=None), r"^topmin_max must be a float in \(0, 1\], got None$"),
        (MutualScoringDetector(topmin_min=0.4, topmin_max=0.3), "topmin_min < topmin_max"),
        (MutualScoringDetector(n_subsets=True), r"^n_subsets must be an int >= 1, got True$"),
        (MutualScoringDetector(topmin_max=True), "topmin_max must be"),
        (MutualScoringDetector(threshold=np.nan), r"^threshold must be None or a float >= 0, got nan$"),
        (MutualScoringDetector(contamination=0.7), r"^contamination must be 'auto' or a float in \(0, 0.5\]"),
        (MutualScoringDetector(novelty="yes"), r"^novelty must be True or False, got 'yes'$"),
        (MutualScoringDetector(random_state="0"), "^random_state must be None, an int or a numpy"),
        (MutualScoringDetector(device="gpu"), "^device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
        (MutualScoringDetector(matmul_precision="float16"), "^matmul_precision must be one of 'float32', "),
        (LNAMDTransformer(batch_size=2.0), r"^batch_size must be an int >= 1, got 2\.0$"),
        (LNAMDTransformer(r_list=(1, 2)), r"^r_list must be a non-empty sequence of odd ints >= 1, got \(1, 2\)$"),
        (LNAMDTransformer(dtype="float64"), "^dtype must be 'float32' or 'float16', got 'float64'$"),
        (RsCINRescorer(k_list=[1, True]), "^k_list must be a non-empty sequence of ints >= 1"),
        (RsCINRescorer(threshold=np.inf), "^threshold must be None or a finite float, got inf$"),
        (RsCINRescorer(embedding="mean"), "^embedding must be one of 'auto', 'salient', 'image', got 'mean'$"),
        (ViTPatchTransformer(image_size=(28, 0)), "^image_size must be a positive int or a"),
        (ViTPatchTransformer(layers="ab"), "^layers must be None, 'inner' or a non-empty sequence of ints, got 'ab'$"),
        (ViTPatchTransformer(progress=1), "^progress must be True or False, got 1$"),
        (ViTPatchTransformer(backbone_kwargs=[1]), r"^backbone_kwargs must be None or a dict, got \[1\]$"),
    ],
)
def test_one_message_style(est, message):
    with pytest.raises(ValueError, match=message):
        est.fit(np.zeros((4, 1, 3, 3, 8), dtype=np.float32))


# ----------------------------------------------------------------------------- pickling


def test_pickled_vit_finds_relative_weights_from_another_directory(tmp_path, monkeypatch):
    """Issue 12: a ViT fitted with a relative weights-file path kept it relative,
    so its pickle loaded its weights from wherever it was unpickled."""
    from safetensors.torch import save_file

    weights = tmp_path / "weights"
    weights.mkdir()
    source = ViTPatchTransformer(**dict(TINY_VIT, image_size=56, random_state=0)).fit()
    save_file({k: v.contiguous() for k, v in source.model_.state_dict().items()}, weights / "tiny.safetensors")
    images = np.random.default_rng(0).integers(0, 256, (3, 30, 34, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    monkeypatch.chdir(weights)
    settings = dict(TINY_VIT, image_size=56, pretrained="tiny.safetensors", dtype="float32")
    vit = ViTPatchTransformer(**settings).fit()
    pipe = Pipeline([("vit", vit), ("lnamd", LNAMDTransformer(device="cpu")),
                     ("msm", MutualScoringDetector(novelty=True, device="cpu"))]).fit(images[:2])
    expected_tokens = vit.transform(images).tokens
    expected_scores = pipe.score_samples(images[2:])
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(pipe))
    other = tmp_path / "elsewhere"
    other.mkdir()
    # a decoy with the same name where the pickle is loaded
    save_file({k: v.contiguous() + 1 for k, v in source.model_.state_dict().items()}, other / "tiny.safetensors")
    code = textwrap.dedent(f"""
        import pickle, numpy as np
        pipe = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, 'rb').read())
        images = np.load({str(tmp_path / 'images.npy')!r})
        np.save('tokens.npy', pipe['vit'].transform(images).tokens)
        np.save('scores.npy', pipe.score_samples(images[2:]))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], cwd=other, check=True, timeout=300, env=env)
    np.testing.assert_array_equal(np.load(other / "tokens.npy"), expected_tokens)
    np.testing.assert_array_equal(np.load(other / "scores.npy"), expected_scores)
