import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import _reference as ref
from _helpers import make_tokens
from sklearn_musc import FeatureSets, LNAMDTransformer, PatchTokens


@pytest.mark.parametrize("r_list", [(1, 3, 5), (1,), (3, 7)])
def test_lnamd_matches_float64_reference(rng, r_list):
    tokens = make_tokens(rng, n=3, n_layers=2, h=6, w=5, dim=12)
    out = LNAMDTransformer(r_list=r_list, aggregation="mean", device="cpu").fit_transform(tokens)
    expected = ref.lnamd(tokens, r_list)
    assert out.features.dtype == np.float32
    assert out.features.shape == expected.shape
    assert np.abs(out.features - expected).max() < 1e-5
    assert out.set_index == tuple((layer, r) for layer in range(2) for r in r_list)


def test_snamd_matches_float64_reference(rng):
    tokens = make_tokens(rng, n=2, n_layers=2, h=5, w=6, dim=8)
    out = LNAMDTransformer(r_list=(1, 3, 5), aggregation="similarity", device="cpu").fit_transform(tokens)
    expected = ref.snamd(tokens, (1, 3, 5))
    assert out.features.shape == expected.shape
    assert np.abs(out.features - expected).max() < 1e-5
    assert out.set_index == ((0, 0), (1, 0))


def test_batching_does_not_change_the_result(rng):
    tokens = make_tokens(rng, n=7)
    whole = LNAMDTransformer(device="cpu", batch_size=32).fit_transform(tokens).features
    pieces = LNAMDTransformer(device="cpu", batch_size=2).fit_transform(tokens).features
    np.testing.assert_array_equal(whole, pieces)


def test_metadata_passes_through_and_layers_name_the_sets(rng):
    tokens = make_tokens(rng, n=3)
    emb = rng.normal(size=(3, 4)).astype(np.float32)
    batch = PatchTokens(
        tokens=tokens.astype(np.float16), embeddings=emb, input_size=(50, 50),
        original_sizes=((60, 80),) * 3, layers=(5, 11), sources=("a", "b", "c"),
    )
    out = LNAMDTransformer(r_list=(1, 3), aggregation="mean", device="cpu").fit_transform(batch)
    assert out.set_index == ((5, 1), (5, 3), (11, 1), (11, 3))
    assert LNAMDTransformer(r_list=(1, 3), device="cpu").fit_transform(batch).set_index == ((5, 0), (11, 0))
    assert out.embeddings is emb and out.input_size == (50, 50)
    assert out.sources == ("a", "b", "c") and out.original_sizes == ((60, 80),) * 3
    sub = out.take([2, 0])
    assert sub.sources == ("c", "a")
    np.testing.assert_array_equal(sub.features[0], out.features[2])
    restored = pickle.loads(pickle.dumps(out))
    np.testing.assert_array_equal(restored.features, out.features)
    assert "features=<float32 array (3, 4, 5, 5, 16)>" in repr(out)


def test_sklearn_contract(rng):
    est = LNAMDTransformer(r_list=[1, 3])
    assert est.get_params() == {
        "r_list": [1, 3], "aggregation": "similarity", "device": "auto", "batch_size": 32, "dtype": "float32",
        "progress": True}
    assert clone(est).r_list == [1, 3]
    with pytest.raises(NotFittedError):
        est.transform(make_tokens(rng))
    est.set_params(device="cpu").fit(make_tokens(rng))
    assert est.set_index_ == ((0, 0), (1, 0))  # SNAMD: one set per layer
    assert clone(est).set_params(aggregation="mean").fit(make_tokens(rng)).set_index_ == \
        ((0, 1), (0, 3), (1, 1), (1, 3))
    assert isinstance(est.transform(make_tokens(rng, n=2)), FeatureSets)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"r_list": (2,)}, "odd"),
        ({"r_list": ()}, "empty"),
        ({"r_list": (0, 1)}, ">= 1"),
        ({"r_list": "abc"}, "ints"),
        ({"aggregation": "max"}, "aggregation"),
        ({"device": "gpu"}, "device"),
        ({"batch_size": 0}, "batch_size"),
        ({"r_list": (11,)}, "larger than"),
        ({"dtype": "float64"}, "dtype must be 'float32' or 'float16'"),
        ({"dtype": "half-ish"}, "dtype"),
    ],
)
def test_bad_parameters_are_named(rng, params, match):
    with pytest.raises(ValueError, match=match):
        LNAMDTransformer(device="cpu").set_params(**params).fit(make_tokens(rng))


def test_bad_inputs(rng):
    est = LNAMDTransformer(device="cpu")
    with pytest.raises(ValueError, match="shape"):
        est.fit(np.zeros((2, 5, 5, 8)))
    with pytest.raises(ValueError, match="numeric"):
        est.fit(np.array([[["a"]]]))
    bad = make_tokens(rng)
    bad[1, 0, 2, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit_transform(bad)
    est.fit(make_tokens(rng))
    with pytest.raises(ValueError, match="fitted on 2 layers of width 16"):
        est.transform(make_tokens(rng, n_layers=3))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_each_feature_set_is_contiguous_in_memory(rng, dtype):
    """MSM reads one set at a time: LNAMD lays each out as one block."""
    feats = LNAMDTransformer(r_list=(1, 3), aggregation="mean", device="cpu", batch_size=2, dtype=dtype).fit_transform(
        make_tokens(rng, n=5, n_layers=2, h=4, w=4, dim=8))
    assert feats.features.shape == (5, 4, 4, 4, 8) and feats.features.dtype == dtype
    for s in range(4):
        assert feats.features[:, s].flags.c_contiguous


@pytest.mark.parametrize("aggregation", ["mean", "similarity"])
def test_float16_storage_is_the_float32_result_rounded(rng, aggregation):
    tokens = make_tokens(rng, n=5, n_layers=2, h=4, w=5, dim=16)
    exact = LNAMDTransformer(aggregation=aggregation, device="cpu", batch_size=2).fit_transform(tokens)
    half = LNAMDTransformer(aggregation=aggregation, device="cpu", batch_size=2, dtype=np.float16).fit_transform(tokens)
    assert half.features.dtype == np.float16 and half.features.nbytes * 2 == exact.features.nbytes
    assert np.array_equal(half.features, exact.features.astype(np.float16))
    assert half.set_index == exact.set_index


def test_check_grid_is_the_rule_fit_applies():
    """check_grid says before any token what fit would refuse, with the largest window allowed."""
    tokens = np.zeros((2, 1, 3, 4, 8), dtype=np.float32)
    assert LNAMDTransformer(r_list=(1, 5)).check_grid((3, 4)) == (1, 5)
    with pytest.raises(ValueError, match=r"3 x 4 patch grid allows \(at most 5\)") as checked:
        LNAMDTransformer(r_list=(1, 7)).check_grid((3, 4))
    with pytest.raises(ValueError) as fitted:
        LNAMDTransformer(r_list=(1, 7), device="cpu").fit(tokens)
    assert str(checked.value) == str(fitted.value)
    with pytest.raises(ValueError, match="odd"):
        LNAMDTransformer(r_list=(2,)).check_grid((3, 4))
