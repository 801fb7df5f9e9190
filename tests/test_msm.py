"""The mutual-scoring kernels of ``_msm`` on their own, against float64 loop references.

The detector's tests (test_scoring.py) check what ``fit`` makes of them;
here each kernel meets a plain loop over images and patches: the table of
best matches (tiled, streamed, against a pool, within a radius), the
interval bounds and average, the repeated-defect filter and the memory plan.
"""

import math

import numpy as np
import pytest
import torch

import _reference as ref
from sklearn_musc import _msm


def _unit(rng, *shape):
    Z = rng.normal(size=shape)
    return Z / np.linalg.norm(Z, axis=-1, keepdims=True)


def _tensor(Z):
    return torch.as_tensor(np.asarray(Z, dtype=np.float32))


def _cpu_plan(n, L, C, k_max, budget=2**30, n_cols=None):
    return _msm.Plan(n, L, C, k_max, torch.device("cpu"), budget, n_cols=n_cols)


def best_dots(a, b, grid=None, radius=None):
    """Float64 loops: for each patch of ``a`` (L, C) its largest dot product with a patch of ``b``
    (within ``radius`` rows and columns of the same grid position when given)."""
    out = np.full(len(a), -np.inf)
    for p in range(len(a)):
        for q in range(len(b)):
            if radius is not None:
                (py, px), (qy, qx) = divmod(p, grid[1]), divmod(q, grid[1])
                if abs(py - qy) > radius or abs(px - qx) > radius:
                    continue
            out[p] = max(out[p], float(np.dot(a[p], b[q])))
    return out


def interval_loops(table, k_min, k_max):
    """Float64 loops: mean distance sqrt(2 - 2 dot) of the matches ranked [k_min, k_max) by closeness."""
    n, L, _ = table.shape
    out = np.empty((n, L))
    for i in range(n):
        for p in range(L):
            dots = sorted((d for d in table[i, p] if np.isfinite(d)), reverse=True)
            out[i, p] = np.mean([math.sqrt(max(0.0, 2.0 - 2.0 * d)) for d in dots[k_min:k_max]])
    return out


@pytest.mark.parametrize("n, topmin, expected", [
    (2, (0.0, 0.3), (0, 1)),     # k_max at least 1 (the reference code would divide by zero)
    (11, (0.0, 0.3), (0, 3)),
    (5, (0.5, 0.9), (2, 3)),
    (5, (0.9, 0.9), (2, 3)),     # k_min below k_max always
    (101, (0.1, 0.5), (10, 50)),
])
def test_interval_bounds(n, topmin, expected):
    assert _msm.interval_bounds(n, *topmin) == expected


@pytest.mark.parametrize("budget_tiles", [None, 1, 3])
def test_max_similarity_table_matches_loops(rng, budget_tiles):
    """Whole, or in tiles of 1 and 3 images streamed from the host: the same best matches."""
    n, L, C = 7, 6, 40  # features wider than the tiles' room: streamed when tiled
    Z = _unit(rng, n, L, C)
    k_max = 2
    if budget_tiles is None:
        plan = _cpu_plan(n, L, C, k_max)
    else:  # room for the table and tiles of `budget_tiles` images, not for the features
        budget = 4 * (n * n * L + 3 * n * k_max * L) + 4 * ((budget_tiles * L) ** 2 + 2 * budget_tiles * L * C)
        plan = _cpu_plan(n, L, C, k_max, budget)
        assert not plan.resident and plan.block == budget_tiles
    table = _msm.max_similarity_table(_tensor(Z), plan).double().numpy()
    want = np.full((n, L, n), -np.inf)
    for i in range(n):
        for j in range(n):
            if j != i:
                want[i, :, j] = best_dots(Z[i], Z[j])
    assert table.shape == (n, L, n)
    assert np.isneginf(table[np.arange(n), :, np.arange(n)]).all()  # an image never scores itself
    finite = np.isfinite(want)
    assert np.abs(table[finite] - want[finite]).max() < 1e-6
    np.testing.assert_allclose(want, ref.similarity_table(Z))  # the loops agree with the shared reference


def test_cross_similarity_table_matches_loops(rng):
    m, n, L, C = 3, 5, 6, 4
    Q, P = _unit(rng, m, L, C), _unit(rng, n, L, C)
    table = _msm.cross_similarity_table(_tensor(Q), _tensor(P), _cpu_plan(m, L, C, 2, n_cols=n)).double().numpy()
    want = np.stack([np.stack([best_dots(Q[i], P[j]) for j in range(n)], axis=1) for i in range(m)])
    assert table.shape == (m, L, n) and np.abs(table - want).max() < 1e-6


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("pool", [False, True])
def test_local_similarity_table_matches_loops(rng, radius, pool):
    n, grid, C = 4, (3, 4), 5
    L = grid[0] * grid[1]
    Z = _unit(rng, n, L, C)
    P = _unit(rng, 3, L, C) if pool else None
    table = _msm.local_similarity_table(_tensor(Z), grid, radius, None if P is None else _tensor(P))
    table = table.double().numpy()
    S = Z if P is None else P
    want = np.stack([np.stack([best_dots(Z[i], S[j], grid, radius) if (pool or i != j) else np.full(L, -np.inf)
                               for j in range(len(S))], axis=1) for i in range(n)])
    assert table.shape == want.shape
    finite = np.isfinite(want)
    assert (np.isfinite(table) == finite).all()
    assert np.abs(table[finite] - want[finite]).max() < 1e-6


@pytest.mark.parametrize("n, topmin", [(2, (0.0, 0.3)), (6, (0.0, 0.5)), (9, (0.2, 0.7)), (9, (0.0, 1.0))])
def test_interval_average_matches_loops(rng, n, topmin):
    L, C = 5, 4
    Z = _unit(rng, n, L, C)
    table = _msm.max_similarity_table(_tensor(Z), _cpu_plan(n, L, C, n - 1))
    k_min, k_max = _msm.interval_bounds(n, *topmin)
    got = _msm.interval_average(table, k_min, k_max).double().numpy()
    want = interval_loops(table.double().numpy(), k_min, k_max)
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(got - ref.msm_one_set(Z, *topmin)).max() < 1e-5  # SPEC's distances, image by image


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_drop_repeats_matches_the_loop_reference(rng, ratio):
    n, L, C = 10, 8, 12
    Z = rng.normal(size=(1, L, C)) + 0.35 * rng.normal(size=(n, L, C))
    defect = 3.0 * rng.normal(size=C)
    for i in (1, 2, 3):  # three images share a defect
        Z[i, rng.integers(L)] = defect + 0.05 * rng.normal(size=C)
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True)
    topmin = (0.0, 0.3)
    table = _msm.max_similarity_table(_tensor(Z), _cpu_plan(n, L, C, n - 1))
    scores = _msm.interval_average(table, *_msm.interval_bounds(n, *topmin))
    got = _msm.drop_repeats(table, scores, ratio, n, lambda m: _msm.interval_bounds(m, *topmin)).double().numpy()
    want = ref.msm_without_repeats(Z, ratio, *topmin)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(want - ref.msm_one_set(Z, *topmin)).max() > 0.1  # the filter changed some image


def test_streaming_from_the_host_within_a_budget():
    n, L, C = 12, 16, 16
    k_max = _msm.interval_bounds(n, 0.0, 0.3)[1]
    table = 4 * (n * n * L + 3 * n * k_max * L)
    budget = table + 4 * (3 * 16) ** 2 + 4 * 2 * 3 * L * C  # room for tiles of 3, not for the set
    plan = _cpu_plan(n, L, C, k_max, budget)
    assert not plan.resident and plan.block == 3 and plan.bytes <= budget
    assert _cpu_plan(n, L, C, k_max, 10 * budget).resident
    with pytest.raises(MemoryError, match=r"max_subset_size=\d+"):
        _cpu_plan(n, L, C, k_max, table // 2)


def test_the_kernel_leaves_no_reference_cycle():
    """Each set's table and features are freed when dropped, not at the next GC.

    A cycle (a recursive closure, say) would keep every set of a fit alive
    until Python's cyclic collector runs, far past the memory budget.
    """
    import gc
    import weakref

    Z = torch.nn.functional.normalize(torch.randn(9, 16, 8), dim=-1)
    plan = _cpu_plan(9, 16, 8, 2, 2**26)
    bounds = _msm.interval_bounds(9, 0.0, 0.3)
    # One call first: a library's lazy imports on first use may build cycles
    # of their own (module objects, caches); those are not the kernel's.
    _msm.interval_average(_msm.max_similarity_table(Z, plan), *bounds)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        table = _msm.max_similarity_table(Z, plan)
        alive = weakref.ref(table)
        del table
        assert alive() is None
        scores = _msm.interval_average(_msm.max_similarity_table(Z, plan), *bounds)
        assert scores.shape == (9, 16)
        gc.collect()
        # Nothing the kernel made waits for the collector: no tensor, no frame
        # or closure of the kernel module.
        left = [o for o in gc.garbage if isinstance(o, torch.Tensor)
                or getattr(getattr(o, "f_code", None), "co_filename", "").endswith("_msm.py")
                or getattr(o, "__module__", None) == _msm.__name__]
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
