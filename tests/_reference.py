"""Slow, obviously correct float64 references written straight from SPEC.md.

Loops and explicit formulas only; nothing here is meant to be fast.
"""

import math

import numpy as np

# The detector's default interval [0, TOPMIN_MAX) of the other images (the paper's is 0.3), so that
# a reference called without bounds is compared with a detector built without them.
TOPMIN_MAX = 0.2


def lnamd(tokens, r_list):
    """SPEC 2: (N, n_layers, h, w, C) -> (N, n_layers * len(r_list), h, w, C)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    n, n_layers, h, w, c = tokens.shape
    out = np.zeros((n, n_layers * len(r_list), h, w, c))
    for i in range(n):
        for layer in range(n_layers):
            x = tokens[i, layer]
            x = (x - x.mean()) / math.sqrt(x.var() + 1e-5)  # one mean/var over (h, w, C)
            for ri, r in enumerate(r_list):
                half = r // 2
                for y in range(h):
                    for xx in range(w):
                        acc = np.zeros(c)
                        for dy in range(-half, half + 1):
                            for dx in range(-half, half + 1):
                                yy, xc = y + dy, xx + dx
                                if 0 <= yy < h and 0 <= xc < w:
                                    acc += x[yy, xc]
                        acc /= r * r  # zero padding counted in the mean
                        out[i, layer * len(r_list) + ri, y, xx] = acc / np.linalg.norm(acc)
    return out


def snamd(tokens, r_list):
    """SPEC 2, MuSc-V2 variant: (N, n_layers, h, w, C) -> (N, n_layers, h, w, C)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    n, n_layers, h, w, c = tokens.shape
    out = np.zeros((n, n_layers, h, w, c))
    for i in range(n):
        for layer in range(n_layers):
            x = tokens[i, layer]
            for y in range(h):
                for xx in range(w):
                    per_r = []
                    for r in r_list:
                        half = r // 2
                        acc, wsum = np.zeros(c), 0.0
                        for dy in range(-half, half + 1):
                            for dx in range(-half, half + 1):
                                yy, xc = y + dy, xx + dx
                                if 0 <= yy < h and 0 <= xc < w:
                                    wgt = math.exp(-np.linalg.norm(x[yy, xc] - x[y, xx]))
                                    acc += wgt * x[yy, xc]
                                    wsum += wgt
                        per_r.append(acc / wsum)
                    v = np.mean(per_r, axis=0)
                    out[i, layer, y, xx] = v / np.linalg.norm(v)
    return out


def msm_one_set(Z, topmin_min=0.0, topmin_max=TOPMIN_MAX):
    """SPEC 3 for one feature set Z (N, L, C): interval averages (N, L)."""
    Z = np.asarray(Z, dtype=np.float64)
    n, L, _ = Z.shape
    k_max = max(1, math.floor((n - 1) * topmin_max))
    k_min = math.floor((n - 1) * topmin_min)
    out = np.zeros((n, L))
    for i in range(n):
        s = []
        for j in range(n):
            if j == i:
                continue
            diff = Z[i][:, None, :] - Z[j][None, :, :]  # (L, L, C)
            s.append(np.sqrt((diff**2).sum(-1)).min(axis=1))
        s = np.sort(np.array(s), axis=0)  # (N-1, L) ascending over j
        out[i] = s[k_min:k_max].mean(axis=0)
    return out


def msm_sets(features, topmin_min=0.0, topmin_max=TOPMIN_MAX):
    """SPEC 3 for every set of (N, n_sets, h, w, C) features: (N, n_sets, h, w)."""
    n, n_sets, h, w, c = features.shape
    return np.stack(
        [msm_one_set(features[:, s].reshape(n, h * w, c), topmin_min, topmin_max).reshape(n, h, w)
         for s in range(n_sets)],
        axis=1,
    )


def similarity_table(Z):
    """Best dot product of each patch of image i with image j's: (N, L, N), -inf for j == i."""
    Z = np.asarray(Z, dtype=np.float64)
    n, L, _ = Z.shape
    out = np.full((n, L, n), -np.inf)
    for i in range(n):
        for j in range(n):
            if j != i:
                out[i, :, j] = (Z[i] @ Z[j].T).max(axis=1)
    return out


def round_significand(x, bits, ties_even):
    """Round to ``bits`` significant bits (TF32: 11, bfloat16: 8), in float64."""
    m, e = np.frexp(np.asarray(x, dtype=np.float64))  # x = m * 2**e, 0.5 <= |m| < 1
    scaled = np.abs(m) * 2.0**bits
    rounded = np.round(scaled) if ties_even else np.floor(scaled + 0.5)
    return np.ldexp(np.sign(m) * rounded / 2.0**bits, e)


def bilinear_align_corners(grid, size):
    """Bilinear upsampling of a (h, w) grid to (H, W) with align_corners=True."""
    grid = np.asarray(grid, dtype=np.float64)
    h, w = grid.shape
    H, W = size
    out = np.zeros((H, W))
    for Y in range(H):
        y = Y * (h - 1) / (H - 1) if H > 1 else 0.0
        y0 = min(int(math.floor(y)), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = y - y0
        for X in range(W):
            x = X * (w - 1) / (W - 1) if W > 1 else 0.0
            x0 = min(int(math.floor(x)), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = x - x0
            out[Y, X] = (
                (1 - fy) * (1 - fx) * grid[y0, x0]
                + (1 - fy) * fx * grid[y0, x1]
                + fy * (1 - fx) * grid[y1, x0]
                + fy * fx * grid[y1, x1]
            )
    return out


def rscin(scores, embeddings, k_list):
    """SPEC 4 with loops; similarities clipped at zero as the library documents."""
    c = np.asarray(scores, dtype=np.float64)
    E = np.asarray(embeddings, dtype=np.float64)
    n = len(c)
    span = c.max() - c.min()
    c = (c - c.min()) / span if span > 0 else np.zeros(n)
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    out = np.zeros(n)
    for k in k_list:
        k = min(k, n)
        for i in range(n):
            sims = [max(0.0, float(E[i] @ E[j])) if j != i else 1.0 for j in range(n)]
            others = sorted((j for j in range(n) if j != i), key=lambda j: -sims[j])
            keep = [i] + others[: k - 1]
            total = sum(sims[j] for j in keep)
            out[i] += sum(sims[j] * c[j] for j in keep) / total
    return out / len(k_list)


def nearest_distances(a, b, grid=None, radius=None):
    """(L,) distance of each patch of image ``a`` (L, C) to its nearest patch of ``b`` (L', C).

    With ``radius``, only the patches of ``b`` within ``radius`` rows and
    columns of the same grid position count (same-position matching).
    """
    L = len(a)
    out = np.empty(L)
    for p in range(L):
        best = np.inf
        for q in range(len(b)):  # b may have more patches: a scorer with its turned copies
            if radius is not None:
                (py, px), (qy, qx) = divmod(p, grid[1]), divmod(q, grid[1])
                if abs(py - qy) > radius or abs(px - qx) > radius:
                    continue
            best = min(best, float(np.linalg.norm(a[p] - b[q])))
        out[p] = best
    return out


def scored_by(image, scorers, topmin_min=0.0, topmin_max=TOPMIN_MAX, reduction="interval", grid=None, radius=None):
    """SPEC 3 for one image of one set: its patch scores (L,) given its scorer images.

    ``scorers`` are the images that score it (the other images of its batch,
    plus references; or a pool): with ``n`` of them, the distances ranked in
    ``[floor(n * topmin_min), max(1, floor(n * topmin_max)))`` are averaged;
    ``reduction="min"`` takes the nearest scorer only.
    """
    d = np.sort([nearest_distances(image, s, grid, radius) for s in scorers], axis=0)  # (n, L)
    if reduction == "min":
        return d[0]
    n = len(scorers)
    k_max = max(1, math.floor(n * topmin_max))
    k_min = min(math.floor(n * topmin_min), k_max - 1)
    return d[k_min:k_max].mean(axis=0)


def msm_without_repeats(Z, ratio, topmin_min=0.0, topmin_max=TOPMIN_MAX, references=None):
    """MutualScoringDetector(repeat_ratio=ratio) for one feature set, in loops: (N, L) scores.

    ``Z`` (N, L, C) the batch, ``references`` (R, L, C) or None. An image's top
    patch has the largest lower-median distance to its scorers; twins: images
    each closer to the other at its own top patch than ``ratio`` x that median.
    """
    Z = np.asarray(Z, dtype=np.float64)
    R = np.zeros((0,) + Z.shape[1:]) if references is None else np.asarray(references, dtype=np.float64)
    n = len(Z)

    def nearest(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)

    def interval(rows, n_images):
        k_max = max(1, math.floor((n_images - 1) * topmin_max))
        k_min = min(math.floor((n_images - 1) * topmin_min), k_max - 1)
        return np.sort(np.array(rows), axis=0)[k_min:k_max].mean(axis=0)

    D = {(i, j): nearest(Z[i], Z[j]) for i in range(n) for j in range(n) if i != j}
    DR = {(i, r): nearest(Z[i], R[r]) for i in range(n) for r in range(len(R))}
    m = n - 1 + len(R)  # scorers of each image
    scores = np.stack([interval([D[i, j] for j in range(n) if j != i] + [DR[i, r] for r in range(len(R))], m + 1)
                       for i in range(n)])
    close = np.zeros((n, n), dtype=bool)
    for i in range(n):
        every = np.array([D[i, j] for j in range(n) if j != i] + [DR[i, r] for r in range(len(R))])  # (m, L)
        top = int(np.argmax(np.sort(every, axis=0)[(m - 1) // 2]))  # the largest lower-median distance
        at_top = {j: D[i, j][top] for j in range(n) if j != i}
        median = sorted(list(at_top.values()) + [DR[i, r][top] for r in range(len(R))])[(m - 1) // 2]
        for j, d in at_top.items():
            close[i, j] = d < ratio * median
    twins = close & close.T
    out = scores.copy()
    for i in range(n):
        c = int(twins[i].sum())
        if 0 < c and 2 * c <= m:
            kept = [D[i, j] for j in range(n) if j != i and not twins[i, j]] + [DR[i, r] for r in range(len(R))]
            out[i] = interval(kept, m + 1 - c)
    return out


def foreground_masks(features, dilation=1):
    """MutualScoringDetector(foreground=...)'s masks from one set (N, h, w, C), in loops.

    Returns (masks (N, h, w) bool, within_share, border_foreground).
    """
    f = np.asarray(features, dtype=np.float64)
    n, h, w, c = f.shape
    Z = f.reshape(-1, c)
    mean = Z.mean(axis=0)
    cov = (Z - mean).T @ (Z - mean) / len(Z)
    _, vectors = np.linalg.eigh(cov)
    p = ((Z - mean) @ vectors[:, -1]).reshape(n, h, w)
    border = [(y, x) for y in range(h) for x in range(w) if y in (0, h - 1) or x in (0, w - 1)]
    fg = p > 0
    if np.mean([fg[i, y, x] for i in range(n) for y, x in border]) > 0.5:
        fg = ~fg
    border_foreground = np.mean([fg[i, y, x] for i in range(n) for y, x in border])
    within_share = sum(((p[i] - p[i].mean()) ** 2).sum() for i in range(n)) / (p**2).sum()
    joined = np.array([[[fg[i, y, x] or fg[:, y, x].mean() >= 0.5 for x in range(w)] for y in range(h)]
                       for i in range(n)])
    masks = np.zeros_like(joined)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                masks[i, y, x] = joined[i, max(0, y - dilation) : y + dilation + 1,
                                        max(0, x - dilation) : x + dilation + 1].any()
    return masks, within_share, border_foreground


def msm_foreground(Z, masks, topmin_max=TOPMIN_MAX):
    """One feature set (N, L, C) scored with background masks (N, L): (N, L) scores.

    A patch's distance to scorer image j is the distance to j's nearest
    foreground patch, at most sqrt(2) (a background patch counts as an
    orthogonal feature); a background patch's score is the lowest foreground
    score of its image.
    """
    Z = np.asarray(Z, dtype=np.float64)
    Z = Z / np.linalg.norm(Z, axis=-1, keepdims=True)
    n, L, _ = Z.shape
    k = max(1, math.floor((n - 1) * topmin_max))
    out = np.zeros((n, L))
    for i in range(n):
        d = []  # per scorer j: (L,) distances to j's nearest foreground patch
        for j in range(n):
            if j != i:
                diff = Z[i][:, None, :] - Z[j][masks[j]][None, :, :]
                d.append(np.minimum(np.sqrt((diff**2).sum(-1)).min(axis=1, initial=np.inf), math.sqrt(2)))
        out[i] = np.sort(np.array(d), axis=0)[:k].mean(axis=0)
        if masks[i].any():
            out[i, ~masks[i]] = out[i, masks[i]].min()
    return out
