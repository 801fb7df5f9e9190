"""Kernels of 2D + 3D fusion (docs/algorithm.rst, "2D + 3D fusion"): distance tables, rank mapping, CAE."""

from __future__ import annotations

import numpy as np
import torch


def distance_tables(Q, P, exclude_self, device, block=8):
    """Smallest distance of each patch of each query sample to each pool sample.

    ``Q`` (n, S, L, C) and ``P`` (m, S, L, C) hold unit-norm patch features of
    ``S`` feature sets. Returns (S, n, L, m') float32, the distances
    ``sqrt(2 - 2 max cos)``; with ``exclude_self`` (``Q`` is ``P``) the
    sample itself is left out, so ``m' = m - 1`` and the other samples keep
    their order.
    """
    n, S, L, _ = Q.shape
    m = P.shape[0]
    cols = m - 1 if exclude_self else m
    out = np.empty((S, n, L, cols), dtype=np.float32)
    with torch.inference_mode():
        for s in range(S):
            pool = torch.as_tensor(np.ascontiguousarray(P[:, s]), dtype=torch.float32, device=device)
            pool = pool.reshape(m * L, -1)
            for start in range(0, n, block):
                q = torch.as_tensor(np.ascontiguousarray(Q[start:start + block, s]), dtype=torch.float32,
                                    device=device)
                sim = (q.reshape(-1, q.shape[-1]) @ pool.T).reshape(len(q), L, m, L).amax(dim=3)
                dist = torch.sqrt(torch.clamp(2.0 - 2.0 * sim, min=0.0)).cpu().numpy()
                for j in range(len(q)):
                    i = start + j
                    out[s, i] = np.delete(dist[j], i, axis=1) if exclude_self else dist[j]
    return out


def interval_mean(table, k_min, k_max):
    """Mean of each row's values of rank ``[k_min, k_max)`` (ascending) along the last axis."""
    part = np.partition(table, k_max - 1, axis=-1)[..., :k_max]
    return np.sort(part, axis=-1)[..., k_min:k_max].mean(axis=-1)


def rank_map(source, target):
    """``target`` with its k-th smallest value replaced by the k-th smallest of ``source``.

    Quantile matching: the result has ``target``'s order and ``source``'s
    values (same number of entries; ties in ``target`` are broken by
    position).
    """
    source = np.asarray(source)
    target = np.asarray(target)
    out = np.empty(target.size, dtype=np.result_type(source, target))
    out[np.argsort(target, axis=None, kind="stable")] = np.sort(source, axis=None)
    return out.reshape(target.shape)


def cae_tables(D2, D3):
    """Cross-modal anomaly enhancement of one sample's distance tables (one set of each modality).

    ``D2`` and ``D3`` (L, R): the 2D and the 3D distances of the sample's L
    patches to the R other samples, on the same patch grid (a patch of the
    image is the patch of the cloud at the same pixels). Each modality is
    told what the other sees, on its own scale: the other's table is
    rank-mapped onto this one's values; a patch whose distances vary less
    across the other samples in the other modality gets the larger weight
    ``w = 1 - (the other's spread, rank-mapped onto this one's spreads)``;
    the enhanced table ``E`` is the rank mapping onto this table of
    ``max(own, other) * w``, and the result is ``(own + E) / 2``.
    Returns ``(F2, F3)`` of shape (L, R).
    """
    D2x, D3x = D3, D2  # the identity correspondence of a shared grid
    w2 = 1.0 - rank_map(D2.std(axis=1), D2x.std(axis=1))
    w3 = 1.0 - rank_map(D3.std(axis=1), D3x.std(axis=1))
    D2x = rank_map(D2, D2x)
    D3x = rank_map(D3, D3x)
    E2 = rank_map(D2, np.maximum(D2, D2x) * w2[:, None])
    E3 = rank_map(D3, np.maximum(D3, D3x) * w3[:, None])
    return (D2 + E2) / 2.0, (D3 + E3) / 2.0


def set_pairs(n2, n3):
    """Which 3D set goes with each 2D set: set i of n2 with set ``i * n3 // n2``, and back."""
    if n2 >= n3:
        return [(i, i * n3 // n2) for i in range(n2)]
    return [(j * n2 // n3, j) for j in range(n3)]


def fused_patch_scores(T2, T3, fusion, bounds):
    """Patch scores of both modalities from their distance tables.

    ``T2`` (S2, n, L, R), ``T3`` (S3, n, L, R). ``fusion="sum"`` scores each
    modality alone (interval mean over the R samples, mean over sets);
    ``"cae"`` scores each pair of sets (:func:`set_pairs`) after
    :func:`cae_tables`. Returns ``(s2, s3)``, each (n, L).
    """
    k_min, k_max = bounds
    if fusion == "sum":
        return interval_mean(T2, k_min, k_max).mean(axis=0), interval_mean(T3, k_min, k_max).mean(axis=0)
    pairs = set_pairs(len(T2), len(T3))
    n, L, _ = T2.shape[1:]
    s2 = np.zeros((n, L))
    s3 = np.zeros((n, L))
    for a, b in pairs:
        for i in range(n):
            F2, F3 = cae_tables(T2[a, i].astype(np.float64), T3[b, i].astype(np.float64))
            s2[i] += interval_mean(F2, k_min, k_max)
            s3[i] += interval_mean(F3, k_min, k_max)
    return s2 / len(pairs), s3 / len(pairs)
