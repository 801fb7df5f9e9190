"""Point-cloud kernels of the 3D path (docs/algorithm.rst, "3D features").

Plain functions on numpy arrays, apart from the estimator that calls them
(:class:`~sklearn_musc.pointcloud.PointCloudPatchTransformer`): background
plane, largest cluster, FPFH, farthest point sampling, iterative point
grouping (IPG), interpolation of group values onto points and pooling of
per-pixel vectors onto a patch grid.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.ndimage import uniform_filter
from scipy.spatial import cKDTree

# ----------------------------------------------------------------- background


def border_mask(shape, width):
    """True on the ``width``-pixel strips along the four sides of an (H, W) frame."""
    mask = np.zeros(shape, dtype=bool)
    width = min(width, shape[0], shape[1])
    if width > 0:
        mask[:width] = mask[-width:] = True
        mask[:, :width] = mask[:, -width:] = True
    return mask


def fit_plane(points):
    """Least-squares plane ``(n, d)`` with ``|n| = 1`` and ``n . p + d = 0`` through ``points`` (k, 3)."""
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    normal = vt[-1]
    return normal, -float(normal @ centre)


def ransac_plane(points, distance, n_sample, n_iter, rng):
    """The plane with the most points of ``points`` within ``distance``, refitted on them.

    Each of ``n_iter`` trials fits a least-squares plane to ``n_sample``
    random points (drawn with replacement: a repeat only weighs a point
    twice); the trial with the most inliers wins (first one on ties) and the
    plane is refitted on its inliers.
    """
    picks = rng.randint(0, len(points), size=(n_iter, n_sample))
    # the trials are compared on at most 2000 of the points (the winner is refitted on all its inliers)
    judges = points if len(points) <= 2000 else points[rng.choice(len(points), 2000, replace=False)]
    samples = points[picks]                                   # (n_iter, n_sample, 3)
    centres = samples.mean(axis=1)
    cov = np.einsum("tki,tkj->tij", samples - centres[:, None], samples - centres[:, None])
    normals = np.linalg.eigh(cov)[1][:, :, 0]                 # smallest eigenvector of each trial
    offsets = -np.einsum("ti,ti->t", normals, centres)
    counts = np.zeros(n_iter, dtype=np.int64)
    for start in range(0, n_iter, 64):                        # bounded memory: 64 trials at a time
        d = np.abs(judges @ normals[start:start + 64].T + offsets[start:start + 64])
        counts[start:start + 64] = (d < distance).sum(axis=0)
    best = int(np.argmax(counts))
    inliers = np.abs(points @ normals[best] + offsets[best]) < distance
    return fit_plane(points[inliers])


def remove_plane(xyz, valid, *, border, ransac_distance, cut_distance, n_sample, n_iter, random_state):
    """Valid pixels off the background plane.

    The plane is fitted (RANSAC) to the valid points of the image border,
    where the object is not; every valid pixel closer to it than
    ``cut_distance`` is background. Fewer than 3 border points: no plane,
    every valid pixel is kept.
    """
    on_border = border_mask(valid.shape, border) & valid
    points = xyz[on_border].astype(np.float64)
    if len(points) < 3:
        return valid.copy()
    rng = np.random.RandomState(random_state)
    normal, offset = ransac_plane(points, ransac_distance, n_sample, n_iter, rng)
    distance = np.abs(xyz.astype(np.float64) @ normal + offset)
    return valid & (distance >= cut_distance)


def largest_cluster(points, eps, min_points):
    """Boolean mask of the points of the largest DBSCAN cluster (all points when there is none)."""
    from sklearn.cluster import DBSCAN

    if len(points) < min_points:
        return np.ones(len(points), dtype=bool)
    labels = DBSCAN(eps=eps, min_samples=min_points).fit(points).labels_
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else None
    if counts is None:
        return np.ones(len(points), dtype=bool)
    return labels == int(np.argmax(counts))


def unit_sphere(points):
    """Points centred on their centroid and divided by their largest distance from it."""
    centre = points.mean(axis=0)
    centred = points - centre
    scale = float(np.sqrt((centred**2).sum(axis=1).max()))
    return centred / (scale if scale > 0 else 1.0), centre, scale


# ----------------------------------------------------------------- FPFH


def fpfh(points, camera, normal_radius, normal_max_nn, feature_radius, feature_max_nn):
    """FPFH descriptors (n, 33) with open3d; normals are turned towards ``camera``."""
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FPFH features need open3d: pip install 'sklearn-musc[3d]' (on Linux open3d also needs the "
            f"system library libusb-1.0: apt-get install libusb-1.0-0); the import failed with: {exc}"
        ) from None
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius, max_nn=normal_max_nn))
    cloud.orient_normals_towards_camera_location(np.asarray(camera, dtype=np.float64))
    feature = o3d.pipelines.registration.compute_fpfh_feature(
        cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=feature_radius, max_nn=feature_max_nn))
    return np.asarray(feature.data, dtype=np.float64).T.copy()


def unit_rows(x):
    """Rows divided by their L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# ----------------------------------------------------------------- groups


def farthest_point_sampling(points, n_centres):
    """Indices of ``n_centres`` points, each the farthest from those before; the first is point 0."""
    n = len(points)
    n_centres = min(n_centres, n)
    chosen = np.empty(n_centres, dtype=np.intp)
    nearest = np.full(n, np.inf)
    cols = np.ascontiguousarray(points.T)  # (3, n): one pass per coordinate is faster than a row-wise sum
    d = np.empty(n)
    tmp = np.empty(n)
    current = 0
    for i in range(n_centres):
        chosen[i] = current
        np.subtract(cols[0], cols[0, current], out=d)
        np.multiply(d, d, out=d)
        for c in (1, 2):
            np.subtract(cols[c], cols[c, current], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            np.add(d, tmp, out=d)
        np.minimum(nearest, d, out=nearest)
        current = int(np.argmax(nearest))
    return chosen


def surface_variation(points, neighbours):
    """``lambda_min / (lambda_1 + lambda_2 + lambda_3)`` of each row's neighbour points.

    ``neighbours`` (G, k) indexes ``points``; each row's points are centred and
    their covariance's eigenvalues give the variation (0 on a plane, at most 1/3).
    """
    local = points[neighbours]
    local = local - local.mean(axis=1, keepdims=True)
    cov = np.einsum("gki,gkj->gij", local, local) / neighbours.shape[1]
    eig = np.linalg.eigvalsh(cov)
    total = eig.sum(axis=1)
    return np.where(total > 0, eig[:, 0] / np.where(total > 0, total, 1.0), 0.0)


def ipg_groups(points, knn, group_size, start_size, flat_threshold, curvature_k):
    """Iterative point grouping: the member indices (G, group_size) of each centre's group.

    ``knn`` (G, K) lists each centre's nearest points, itself first, K >= group_size.
    A flat centre (surface variation of its ``curvature_k - 1`` nearest
    points, itself dropped, below ``flat_threshold``) takes its
    ``group_size`` nearest points. A curved one starts from its
    ``start_size`` nearest and grows by rounds: the candidates are the rest
    of its K-list, ranked by their distance to the nearest member, and the
    closest ``min(start_size, missing)`` distinct ones join. Growing along
    the surface this way follows a bend instead of cutting across it. All
    curved groups grow by the same counts, so each round runs on all of them
    at once.
    """
    curvature = surface_variation(points, knn[:, 1:curvature_k])
    groups = knn[:, :group_size].copy()
    curved = np.flatnonzero(curvature >= flat_threshold)
    if len(curved) == 0 or start_size >= group_size:
        return groups, curvature
    members = knn[curved, :start_size]
    candidates = knn[curved, start_size:]
    rows = np.arange(len(curved))[:, None]
    while members.shape[1] < group_size and candidates.shape[1] > 0:
        n_add = min(start_size, group_size - members.shape[1], candidates.shape[1])
        # distance of each candidate to its nearest member: (curved, candidates)
        cand, memb = points[candidates], points[members]
        sq = (cand**2).sum(-1)[:, :, None] + (memb**2).sum(-1)[:, None, :] - 2.0 * cand @ memb.transpose(0, 2, 1)
        nearest = np.sqrt(np.maximum(sq.min(axis=2), 0.0))
        order = np.argsort(nearest, axis=1, kind="stable")
        members = np.concatenate([members, candidates[rows, order[:, :n_add]]], axis=1)
        candidates = candidates[rows, np.sort(order[:, n_add:], axis=1)]  # the rest, in K-list order
    groups[curved, : members.shape[1]] = members
    return groups, curvature


def interpolate_to_points(points, centres, values, k=3):
    """Each point's inverse-squared-distance weighted mean of its ``k`` nearest centres' values."""
    k = min(k, len(centres))
    d, idx = cKDTree(centres).query(points, k=k)
    d, idx = d.reshape(len(points), k), idx.reshape(len(points), k)
    w = 1.0 / np.maximum(d, 1e-12) ** 2
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("pk,pk...->p...", w, values[idx])


# ----------------------------------------------------------------- onto the patch grid


def crop_box(shape, aspect):
    """The centred box ``(r0, r1, c0, c1)`` of an (H, W) frame with ``aspect = height / width``.

    It is what a resize that covers the model input followed by a centre crop
    keeps of the frame (as the images are preprocessed).
    """
    H, W = shape
    if H / W > aspect:
        h = int(round(W * aspect))
        r0 = (H - h) // 2
        return r0, r0 + h, 0, W
    w = int(round(H / aspect))
    c0 = (W - w) // 2
    return 0, H, c0, c0 + w


def smooth_on_mask(values, mask, size):
    """Mean of ``values`` (H, W, C) over the foreground pixels of each ``size`` x ``size`` window."""
    if size <= 1:
        return values
    weight = uniform_filter(mask.astype(np.float64), size=size, mode="constant")
    out = np.empty_like(values)
    for c in range(values.shape[-1]):
        out[..., c] = uniform_filter(values[..., c] * mask, size=size, mode="constant")
    return np.where(mask[..., None], out / np.maximum(weight, 1e-12)[..., None], 0.0)


def pool_to_grid(rows, cols, values, shape, grid, aspect):
    """Mean over each patch cell of per-pixel vectors, background pixels counting as a unit flag.

    ``values`` (n, ..., C) belong to the foreground pixels ``(rows, cols)`` of
    an (H, W) frame; every other pixel is background with the vector
    ``(0, ..., 0, 1)``. The frame is cropped to ``aspect`` (centred) and cut
    into ``grid`` cells. Returns (grid_h, grid_w, ..., C + 1).
    """
    r0, r1, c0, c1 = crop_box(shape, aspect)
    gh, gw = grid
    h, w = r1 - r0, c1 - c0
    keep = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    cell = ((rows[keep] - r0) * gh // h) * gw + (cols[keep] - c0) * gw // w
    # pixels per cell (the frame's own, so partly cut cells still average correctly)
    per_row = np.bincount(np.arange(h) * gh // h, minlength=gh)
    per_col = np.bincount(np.arange(w) * gw // w, minlength=gw)
    n_pixels = np.outer(per_row, per_col).reshape(-1).astype(np.float64)
    flat = values[keep].reshape(int(keep.sum()), -1)
    member = sparse.csr_matrix((np.ones(len(cell)), (cell, np.arange(len(cell)))), shape=(gh * gw, len(cell)))
    sums = np.asarray(member @ flat).reshape((gh * gw,) + values.shape[1:])
    n_fg = np.asarray(member.sum(axis=1)).reshape(-1)
    extra = (1,) * (values.ndim - 2)
    background = ((n_pixels - n_fg) / n_pixels).reshape((-1,) + extra + (1,))
    background = np.broadcast_to(background, sums.shape[:-1] + (1,))
    pooled = np.concatenate([sums / n_pixels.reshape((-1,) + extra + (1,)), background], axis=-1)
    return pooled.reshape((gh, gw) + pooled.shape[1:])
