"""Slow, obviously correct float64 references of the 3D and 2D + 3D steps (SPEC-3D, the project's reading).

Loops and explicit formulas only; nothing here is meant to be fast.
"""

import math

import numpy as np


def dist(a, b):
    return math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))


def surface_variation(points):
    """lambda_min / sum of eigenvalues of the covariance of ``points`` (k, 3)."""
    p = np.asarray(points, dtype=np.float64)
    c = p - p.mean(axis=0)
    cov = np.zeros((3, 3))
    for row in c:
        cov += np.outer(row, row)
    eig = sorted(np.linalg.eigvalsh(cov / len(p)))
    total = sum(eig)
    return eig[0] / total if total > 0 else 0.0


def ipg(points, knn_row, group_size, start_size, flat_threshold, curvature_k):
    """One centre's group: plain kNN when flat, else grown from the nearest by closest distinct candidates."""
    if surface_variation([points[j] for j in knn_row[1:curvature_k]]) < flat_threshold:
        return list(knn_row[:group_size])
    members = list(knn_row[:start_size])
    candidates = list(knn_row[start_size:])
    while len(members) < group_size and candidates:
        # distance of each candidate to its nearest member
        scored = []
        for pos, c in enumerate(candidates):
            scored.append((min(dist(points[c], points[m]) for m in members), pos, c))
        scored.sort()
        chosen = [c for _, _, c in scored[: min(start_size, group_size - len(members))]]
        members.extend(chosen)
        candidates = [c for c in candidates if c not in chosen]
    return members


def farthest_point_sampling(points, n):
    chosen = [0]
    while len(chosen) < min(n, len(points)):
        best, best_d = None, -1.0
        for i in range(len(points)):
            d = min(dist(points[i], points[j]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def interpolate(points, centres, values, k=3):
    out = []
    for p in points:
        d = sorted((dist(p, c), j) for j, c in enumerate(centres))[:k]
        w = [1.0 / max(di, 1e-12) ** 2 for di, _ in d]
        out.append(sum(wi * np.asarray(values[j], dtype=np.float64) for wi, (_, j) in zip(w, d)) / sum(w))
    return np.array(out)


def pool_to_grid(mask, per_pixel, grid, box):
    """Cell means over the box (r0, r1, c0, c1) of [vector, 0] on the mask and [0..., 1] elsewhere."""
    r0, r1, c0, c1 = box
    gh, gw = grid
    C = per_pixel.shape[-1]
    out = np.zeros((gh, gw, C + 1))
    count = np.zeros((gh, gw))
    for r in range(r0, r1):
        for c in range(c0, c1):
            i = (r - r0) * gh // (r1 - r0)
            j = (c - c0) * gw // (c1 - c0)
            v = np.zeros(C + 1)
            if mask[r, c]:
                v[:C] = per_pixel[r, c]
            else:
                v[C] = 1.0
            out[i, j] += v
            count[i, j] += 1
    return out / count[..., None]


def rank_map(source, target):
    """Entry of rank k in target (ties by position) takes the k-th smallest source value."""
    s = sorted(float(v) for v in np.ravel(source))
    t = [float(v) for v in np.ravel(target)]
    order = sorted(range(len(t)), key=lambda i: (t[i], i))
    out = [0.0] * len(t)
    for rank, i in enumerate(order):
        out[i] = s[rank]
    return np.array(out).reshape(np.shape(target))


def std_rows(D):
    out = []
    for row in D:
        m = sum(row) / len(row)
        out.append(math.sqrt(sum((v - m) ** 2 for v in row) / len(row)))
    return np.array(out)


def cae(D2, D3):
    """SPEC-3D section 6 on a shared grid (each patch corresponds to itself)."""
    D2 = np.asarray(D2, dtype=np.float64)
    D3 = np.asarray(D3, dtype=np.float64)
    D2x, D3x = D3.copy(), D2.copy()
    w2 = 1 - rank_map(std_rows(D2), std_rows(D2x))
    w3 = 1 - rank_map(std_rows(D3), std_rows(D3x))
    D3x = rank_map(D3, D3x)
    D2x = rank_map(D2, D2x)
    L, R = D2.shape
    m2 = np.array([[max(D2[p, r], D2x[p, r]) * w2[p] for r in range(R)] for p in range(L)])
    m3 = np.array([[max(D3[p, r], D3x[p, r]) * w3[p] for r in range(R)] for p in range(L)])
    E2, E3 = rank_map(D2, m2), rank_map(D3, m3)
    return (D2 + E2) / 2, (D3 + E3) / 2


def tables(features, pool=None):
    """(n, L, R): for each sample, patch and other sample (or pool sample), the nearest-patch distance."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    p = f if pool is None else np.asarray(pool, dtype=np.float64)
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    out = []
    for i in range(len(f)):
        rows = []
        for a in range(f.shape[1]):
            rows.append([min(dist(f[i, a], p[r, b]) for b in range(p.shape[1]))
                         for r in range(len(p)) if pool is not None or r != i])
        out.append(rows)
    return np.array(out)


def interval_mean(row, k_min, k_max):
    return float(np.mean(sorted(row)[k_min:k_max]))
