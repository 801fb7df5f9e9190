"""Per-batch scoring loops of MSM: numpy feature sets in, patch scores out.

The kernels of :mod:`._msm` work on one feature set of torch tensors; the
loops here walk the feature sets of a batch, move each one to the device,
apply the interval average and return numpy arrays. Two ways of scoring:

- :func:`score_batch`: the images of a batch score each other (MuSc), with
  optional known-normal references joining the scorers (few-shot);
- :func:`pool_best_matches` + :func:`merge_best_matches`: new images scored
  by a fitted pool only (novelty mode). A pool can be split into parts whose
  best matches are merged, so that parts run on different workers.

Turned copies of the scorer images (``ViTPatchTransformer(turns=...)``) come
as ``copies``: for each image and set, its copies' patches stacked into one
tall grid (:func:`stack_copies`), so they load, normalise and pool exactly as
feature sets do. A scorer image then has its own patches and its copies':
its column of the table is the best match over both, and never an image's
own copies (the table's diagonal stays ``-inf``).
"""

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import _msm


def _tensor(array):
    """A torch view of a numpy array, read-only ones included (memory-mapped features).

    torch warns that it cannot protect a read-only array from writes; the
    scoring loops only read what they are given.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array)


def _load_set(part, where):
    """One feature set (n, h, w, C) as unit-norm float32 (n, L, C) on ``where``.

    Moved as stored (float16: half the bytes), then normalised where it
    lives: idempotent for LNAMD output, and makes raw arrays safe for
    ``||x - y||^2 = 2 - 2 x.y``.
    """
    n, h, w, dim = part.shape
    Z = _tensor(part).reshape(n, h * w, dim)
    if Z.dtype not in (torch.float16, torch.float32):
        Z = Z.float()
    Z = Z.to(where, non_blocking=True).float()
    return F.normalize(Z, dim=-1), Z.isfinite().all()


def stack_copies(turned):
    """Turned copies (n, n_turns, n_sets, h, w, C) as feature sets (n, n_sets, n_turns * h, w, C).

    Each image's copies of one set become one grid of ``n_turns * h`` rows:
    the scorer patches of the copies, in the layout of a feature set (a view
    when the copies are set-major, as :class:`LNAMDTransformer` makes them).
    """
    n, n_turns, n_sets, h, w, dim = turned.shape
    return np.moveaxis(turned, 1, 2).reshape(n, n_sets, n_turns * h, w, dim)


def _table(Z, plan, matmul_precision, algorithm, radius, grid, P=None, progress=None, copies=None):
    """The best-match table of ``Z`` against itself (P None) or against ``P``.

    ``copies`` (n_scorers, n_turns * L, C) or None: the patches of the
    scorers' turned copies (of ``Z``'s images when ``P`` is None, else of
    ``P``'s), maximised into the table; an image's own copies never score it.
    ``progress`` (callable or None) is called with numbers of image pairs as
    they are compared: ``n (n - 1) / 2`` against itself, ``n * len(P)``
    against ``P``, plus ``n_turns`` times ``n * n_scorers`` for the copies.
    """
    if copies is not None:
        if radius is not None:
            raise ValueError("turned copies cannot be matched at the same position (radius)")
        if P is not None:  # one product per tile: each scorer's own patches and its copies'
            return _msm.cross_similarity_table(Z, torch.cat([P, copies.to(P.device)], dim=1), plan,
                                               matmul_precision, progress)
        table = _table(Z, plan, matmul_precision, algorithm, radius, grid, progress=progress)
        _msm.cross_similarity_table(Z, copies, plan, matmul_precision, progress, out=table)
        idx = torch.arange(len(Z), device=table.device)
        table[idx, :, idx] = -math.inf  # never an image's own copies
        return table
    if radius is not None:
        Z, P = Z.to(plan.device), None if P is None else P.to(plan.device)
        table = _msm.local_similarity_table(Z, grid, radius, P=P, matmul_precision=matmul_precision)
        if progress is not None:
            progress(len(Z) * (len(Z) - 1) // 2 if P is None else len(Z) * len(P))
        return table
    if P is None:
        return _msm.max_similarity_table(Z, plan, matmul_precision, algorithm, progress)
    return _msm.cross_similarity_table(Z, P, plan, matmul_precision, progress)


def batch_pairs(n, n_refs, n_sets, n_turns=0):
    """Image pairs :func:`score_batch` compares: the unit of its ``progress``."""
    return n_sets * (n * (n - 1) // 2 + n * n_refs + n_turns * n * (n + n_refs))


def score_batch(features, rows, set_ids, k_bounds, device, budget, matmul_precision, algorithm,
                radius=None, references=None, repeat_ratio=None, bounds=None, keep=None, copies=None,
                reference_copies=None, progress=None):
    """Per-set patch scores of the images ``rows`` (None: all): (n, n_sets, h, w) float32.

    The images score each other; ``references`` (R, n_sets, h, w, C), when
    given, join the scorers of every image and are not scored. The images of
    a subset are gathered one set at a time, so no more than one set is ever
    copied on the host; with all images, a set laid out contiguously (as
    :class:`LNAMDTransformer` makes them) is not copied at all. Scores and
    the finiteness check stay on the device until every set is queued:
    nothing waits for the GPU inside the loop, so it computes one set while
    the host moves the next one. With ``repeat_ratio``, each set's images that
    share their most anomalous patch with other images of the batch are
    scored again without them (:func:`._msm.drop_repeats`, from the same
    table: no further products). With ``keep``, also returns each patch's ``keep`` best
    matches among its scorers, as :func:`best_matches` (from the same table).
    ``progress`` is called with the image pairs compared (:func:`batch_pairs` in all).
    ``copies`` (and ``reference_copies``), (n, n_sets, n_turns * h, w, C) from
    :func:`stack_copies`: the turned copies of the images (of the references),
    which score every image but their own.
    """
    n = len(features) if rows is None else len(rows)
    _, _, h, w, dim = features.shape
    L = h * w
    n_refs = 0 if references is None else len(references)
    n_turns = 0 if copies is None else copies.shape[2] // h
    plan = _msm.Plan(n, L, dim, k_bounds[1], device, budget,
                     n_cols=None if n_refs == 0 else n + n_refs, n_turns=n_turns)
    where = device if plan.resident or radius is not None else torch.device("cpu")
    with torch.inference_mode():
        scores = torch.empty((n, len(set_ids), L), dtype=torch.float32, device=device)
        if keep is not None:
            best = np.full((n, len(set_ids), L, keep), -np.inf, dtype=np.float32)
        finite = torch.ones((), dtype=torch.bool, device=where)
        for s in set_ids:
            Z, ok = _load_set(features[:, s] if rows is None else features[rows, s], where)
            finite &= ok
            Zc = None
            if copies is not None:
                Zc, ok = _load_set(copies[:, s] if rows is None else copies[rows, s], where)
                finite &= ok
            table = _table(Z, plan, matmul_precision, algorithm, radius, (h, w), progress=progress, copies=Zc)
            if n_refs:
                R, ok = _load_set(references[:, s], where)
                finite &= ok
                Rc = None
                if reference_copies is not None:
                    Rc, ok = _load_set(reference_copies[:, s], where)
                    finite &= ok
                against = _table(Z, plan, matmul_precision, algorithm, radius, (h, w), R, progress, copies=Rc)
                table = torch.cat([table, against], dim=2)
            scores[:, s] = _msm.interval_average(table, *k_bounds)
            if keep is not None:
                k = min(keep, table.shape[2])
                best[:, s, :, :k] = torch.topk(table, k, dim=2, sorted=True).values.cpu().numpy()
            if repeat_ratio is not None:  # bounds: (k_min, k_max) for a smaller count of scorers
                scores[:, s] = _msm.drop_repeats(table, scores[:, s], repeat_ratio, n, bounds)
            del table
        if not bool(finite):  # NaN scores are refused, not returned
            raise ValueError("features contains NaN or infinity")
        scores = scores.reshape(n, len(set_ids), h, w).cpu().numpy()
        return scores if keep is None else (scores, best)


def prepare_pool(features):
    """A pool kept for novelty scoring: its sets set-major, ready to multiply.

    Parameters
    ----------
    features : ndarray of shape (N, n_sets, h, w, C)
        The pool's feature sets (float16 or float32, as stored).

    Returns
    -------
    sets : ndarray of shape (n_sets, N, h, w, C)
        float32 features: normalised here once (the values a batch fit
        normalises at every fit), so scoring multiplies them as they are.
        float16 features: as given (no copy when they are laid out set-major,
        as :class:`LNAMDTransformer` makes them), to keep half the size.
    inv_norms : ndarray of shape (n_sets, N, h * w), float32, or None
        For float16 sets, ``1 / ||x||`` of each patch, applied when a set is
        converted to float32 for scoring; None for float32 sets.
    """
    n, n_sets, h, w, dim = features.shape
    half = features.dtype == np.float16
    if half:
        sets = np.ascontiguousarray(features.transpose(1, 0, 2, 3, 4))
        inv_norms = np.empty((n_sets, n, h * w), dtype=np.float32)
    else:
        sets, inv_norms = np.empty((n_sets, n, h, w, dim), dtype=np.float32), None
    with torch.inference_mode():
        for s in range(n_sets):
            Z = _tensor(features[:, s]).reshape(n, h * w, dim).float()
            if not bool(Z.isfinite().all()):
                raise ValueError("features contains NaN or infinity")
            if half:
                norms = torch.linalg.vector_norm(Z, dim=-1)
                inv_norms[s] = (1.0 / torch.clamp(norms, min=1e-12)).numpy()
            else:
                sets[s] = F.normalize(Z, dim=-1).reshape(n, h, w, dim).numpy()
    return sets, inv_norms


def pool_best_matches(new, pool_sets, pool_inv_norms, k_max, device, budget, matmul_precision, radius=None,
                      pool_copies=None, progress=None):
    """The ``k_max`` best matches of each new patch among the pool's images.

    Parameters
    ----------
    new : ndarray of shape (m, n_sets, h, w, C)
        Feature sets of the images to score.
    pool_sets, pool_inv_norms : ndarray (inv_norms: or None)
        The pool (or a part of it, sliced on the image axis), as made by
        :func:`prepare_pool`.
    progress : callable or None
        Called with the image pairs compared (``n_sets * m * N`` in all,
        ``1 + n_turns`` times that with copies).
    pool_copies : (ndarray, ndarray or None) or None
        The turned copies of the pool images, :func:`prepare_pool` of
        :func:`stack_copies`: each pool image scores with its own patches
        and its copies'.

    Returns
    -------
    best : ndarray of shape (m, n_sets, L, min(k_max, N)), float32
        Dot products, largest first: with the best matches of the other
        parts of a pool, :func:`merge_best_matches` makes the scores.
    """
    m, n_sets, h, w, dim = new.shape
    N = pool_sets.shape[1]
    L, keep = h * w, min(k_max, N)
    # As many new images at once as the table of best matches allows.
    per_image = 4 * (N * L + 3 * keep * L)
    chunk = int(max(1, min(m, budget // (2 * per_image))))
    n_turns = 0 if pool_copies is None else pool_copies[0].shape[2] // h
    plan = _msm.Plan(chunk, L, dim, keep, device, budget, n_cols=N, n_turns=n_turns)
    where = device if plan.resident or radius is not None else torch.device("cpu")
    with torch.inference_mode():
        best = torch.empty((m, n_sets, L, keep), dtype=torch.float32, device=device)
        finite = torch.ones((), dtype=torch.bool, device=where)
        for s in range(n_sets):
            P = _pool_set(pool_sets, pool_inv_norms, s, where)
            if pool_copies is not None:  # each pool image with its copies: (N, (1 + n_turns) L, C)
                P = torch.cat([P.float(), _pool_set(*pool_copies, s, where).float()], dim=1)
            for c0 in range(0, m, chunk):
                Q, ok = _load_set(new[c0 : c0 + chunk, s], where)
                finite &= ok
                table = _table(Q, plan, matmul_precision, "matmul", radius, (h, w), P, progress)
                best[c0 : c0 + len(Q), s] = torch.topk(table, keep, dim=2, sorted=True).values
                del table
        if not bool(finite):
            raise ValueError("features contains NaN or infinity")
        return best.cpu().numpy()


def _pool_set(sets, inv_norms, s, where):
    """Set ``s`` of a pool made by :func:`prepare_pool`, (N, L, C) on ``where``."""
    N, _, _, dim = sets.shape[1:]
    P = _tensor(sets[s]).reshape(N, -1, dim).to(where, non_blocking=True)
    if inv_norms is not None:  # float16 pool: normalised on the way to float32
        P = P.float() * _tensor(inv_norms[s]).to(where)[..., None]
    return P


def merge_best_matches(parts, k_bounds):
    """Interval averages (m, n_sets, L) from the best matches of the parts of a pool."""
    k_min, k_max = k_bounds
    best = torch.as_tensor(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=3))
    if best.shape[3] > k_max or len(parts) > 1:
        best = torch.topk(best, k_max, dim=3, sorted=True).values
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * best[..., k_min:k_max], min=0.0))
    return dist.mean(dim=3).numpy()


def best_matches(features, keep, device, budget, matmul_precision, radius=None, progress=None, copies=None):
    """The ``keep`` best matches of each patch among the *other* images of ``features``.

    What a pool keeps for conformal calibration and for growing without a
    refit (:meth:`MutualScoringDetector.partial_fit`): the ``keep`` largest
    dot products of each patch with the other images, largest first, padded
    with ``-inf`` where there are fewer other images (``-inf`` reads as a
    scorer infinitely far away).

    Parameters
    ----------
    features : ndarray of shape (n, n_sets, h, w, C)
    progress : callable or None
        Called with the image pairs compared (``n_sets * n * (n - 1) / 2`` in all,
        plus ``n_sets * n_turns * n * n`` with copies).
    copies : ndarray of shape (n, n_sets, n_turns * h, w, C) or None
        The images' turned copies (:func:`stack_copies`), scorers of every image but their own.

    Returns
    -------
    best : ndarray of shape (n, n_sets, h * w, keep), float32
    """
    n, n_sets, h, w, dim = features.shape
    L = h * w
    best = np.full((n, n_sets, L, keep), -np.inf, dtype=np.float32)
    if n < 2:
        return best
    k = min(keep, n)  # the table's own column is -inf: with k == n it is the last entry
    plan = _msm.Plan(n, L, dim, k, device, budget, n_turns=0 if copies is None else copies.shape[2] // h)
    where = device if plan.resident or radius is not None else torch.device("cpu")
    with torch.inference_mode():
        finite = torch.ones((), dtype=torch.bool, device=where)
        for s in range(n_sets):
            Z, ok = _load_set(features[:, s], where)
            finite &= ok
            Zc = None
            if copies is not None:
                Zc, ok = _load_set(copies[:, s], where)
                finite &= ok
            table = _table(Z, plan, matmul_precision, "matmul", radius, (h, w), progress=progress, copies=Zc)
            best[:, s, :, :k] = torch.topk(table, k, dim=2, sorted=True).values.cpu().numpy()
            del table
        if not bool(finite):
            raise ValueError("features contains NaN or infinity")
    return best


def merge_kept(parts, keep):
    """The ``keep`` largest of the best-match lists ``parts`` (joined on their last axis), largest first."""
    joined = torch.as_tensor(np.concatenate(parts, axis=-1))
    k = min(keep, joined.shape[-1])
    out = np.full(joined.shape[:-1] + (keep,), -np.inf, dtype=np.float32)
    out[..., :k] = torch.topk(joined, k, dim=-1, sorted=True).values.numpy()
    return out


def kept_scores(best, k_bounds):
    """Interval averages (n, n_sets, L) from kept best-match lists, as :func:`merge_best_matches` makes them."""
    k_min, k_max = k_bounds
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * torch.as_tensor(best[..., k_min:k_max]), min=0.0))
    return dist.mean(dim=-1).numpy()
