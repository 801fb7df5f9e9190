"""Mutual-scoring kernels on torch tensors (docs/algorithm.rst, "Mutual scoring").

For unit vectors ``||x - y||^2 = 2 - 2 x.y``, so the nearest patch of image j
to a patch of image i is the one with the largest dot product. One matrix
product per pair of image tiles gives the dot products of all their patch
pairs; its row maxima serve the pairs (i, j) and its column maxima the pairs
(j, i), so each unordered pair of images is multiplied exactly once.
"""

import contextlib
import math
import os

import torch

from . import _msm_fused

_F32 = 4
PRECISIONS = ("float32", "tf32", "bfloat16")
ALGORITHMS = ("matmul", "fused")

# Largest product tile: big enough for the matrix multiply to run at full
# speed, small enough to stay in the CPU's caches / leave GPU memory free.
_TILE_BYTES = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}


def interval_bounds(n_images, topmin_min, topmin_max):
    """``(k_min, k_max)`` for a batch of ``n_images``.

    ``k_max`` is at least 1, where the reference code divides by zero
    (docs/algorithm.rst, "Where the reference code and the paper differ").
    """
    others = n_images - 1
    k_max = max(1, int(math.floor(others * topmin_max)))
    k_min = min(int(math.floor(others * topmin_min)), k_max - 1)
    return k_min, k_max


def _available_ram():
    """Bytes of RAM a new allocation can have: MemAvailable, within a cgroup v2 limit.

    MemAvailable counts the page cache the kernel gives back on demand (MemFree
    does not, and is small on a machine that has just read its images); in a
    container, ``/proc/meminfo`` shows the host's memory, so the container's
    own limit is applied too.
    """
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # not Linux, or a kernel before 3.14
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 4 * 2**30
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def default_memory_budget(device):
    """Half of the device's free memory (of the available RAM on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return _available_ram() // 2


class Plan:
    """How one feature set is scored within a memory budget.

    ``n`` images are scored by ``n_cols`` scorer images (``n_cols=None``: the
    ``n`` images score each other). The working set, in float32 values, is
    ``n*n_cols*L`` (the table of best matches, the only term growing faster
    than the images) + ``3*n*k_max*L`` (the ``k_max`` best matches and their
    indices) + the features (``(n + n_cols)*L*C`` for a pool, ``n*L*C`` for a
    batch, when they fit, else two tiles ``2*b*L*C`` streamed from the host)
    + one product tile ``(b*L)**2``. With ``n_turns`` turned copies of
    each scorer image, their ``n_turns*n_cols*L*C`` features count too (the
    table keeps its size: the copies are maximised into it).
    """

    def __init__(self, n, L, C, k_max, device, budget, n_cols=None, n_turns=0):
        cols = n if n_cols is None else n_cols
        fixed = _F32 * (n * cols * L + 3 * n * k_max * L)
        if fixed > budget:
            raise MemoryError(self._advice(n, L, cols, k_max, fixed, budget, n_cols is None))
        left = budget - fixed
        features = _F32 * ((n if n_cols is None else n + n_cols) + n_turns * cols) * L * C
        self.resident = features <= left // 2
        left -= features if self.resident else 0
        tile = min(_TILE_BYTES[device.type], left)
        # b images per tile: (b*L)**2 products (+ two streamed tiles of features)
        b = int(math.sqrt(tile / _F32)) // L
        while b > 1 and _F32 * ((b * L) ** 2 + (0 if self.resident else 2 * b * L * C)) > left:
            b -= 1
        self.block = max(1, min(b, max(n, cols)))
        self.device = device
        self.bytes = fixed + (features if self.resident else 0) + _F32 * (self.block * L) ** 2

    @staticmethod
    def _advice(n, L, cols, k_max, fixed, budget, batch):
        need = f"{fixed / 2**30:.3g} GiB for the table of per-image best matches"
        over = f"over the memory budget of {budget / 2**30:.3g} GiB"
        if not batch:  # new images against a pool: the caller already scores them one by one
            return (f"scoring one image against a pool of {cols} images of {L} patches needs {need}, "
                    f"{over}: raise memory_budget or fit the detector on a smaller pool")
        per_image = _F32 * (n * L + 3 * k_max * L)
        fit = int(budget // per_image)
        if fit < 2:
            return (f"scoring {n} images of {L} patches needs {need}, {over}, which cannot hold "
                    "even a subset of 2 images: raise memory_budget")
        return (f"scoring {n} images of {L} patches needs {need}, {over}: score the batch in "
                f"subsets (max_subset_size={fit} or n_subsets={math.ceil(n / fit)}) or raise "
                "memory_budget")


@contextlib.contextmanager
def _allow_tf32(matmul_precision, device):
    """TF32 products for this block of code only (CUDA's global switch)."""
    if matmul_precision != "tf32" or device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def round_tf32(x):
    """float32 -> TF32 values (10-bit mantissa), round to nearest, ties away."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def round_bf16(x):
    """float32 -> bfloat16 values (8-bit mantissa), round to nearest even."""
    return x.to(torch.bfloat16).to(torch.float32)


def bf16_products_supported():
    """Whether this torch has bfloat16 products with float32 outputs (2.8 and later)."""
    a = torch.empty(1, 1, dtype=torch.bfloat16, device="meta")
    try:
        torch.mm(a, a, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def _product_fn(matmul_precision, device):
    """``(load_dtype, rounding, product)`` for one matmul precision on one device.

    On CUDA the tensor cores do the rounding: TF32 under ``allow_tf32``, and
    bfloat16 inputs multiplied into float32 outputs (a bfloat16 output would
    quantise ``x.y`` near 1, where the distances live, to steps of 2**-8).
    Elsewhere the same input rounding is emulated and the products are exact
    float32, so the numerical effect of a precision can be checked, and
    tested, on any machine.
    """
    if device.type == "cuda" and matmul_precision == "bfloat16":
        return torch.bfloat16, None, lambda a, b: torch.mm(a, b.T, out_dtype=torch.float32)
    rounding = None
    if device.type != "cuda":
        rounding = {"tf32": round_tf32, "bfloat16": round_bf16}.get(matmul_precision)
    return torch.float32, rounding, lambda a, b: a @ b.T


def _triangle(a0, a1):
    """Image ranges ``(a0, a1, b0, b1)`` that cover each unordered pair once.

    The two halves against each other, then each half on its own, so no
    product is spent on the diagonal. A loop, not a recursive closure: a
    closure that calls itself is a reference cycle, which would keep each
    set's table and features alive until Python's cyclic collector runs.
    """
    todo = [(a0, a1)]
    while todo:
        a0, a1 = todo.pop()
        if a1 - a0 >= 2:
            mid = (a0 + a1) // 2
            yield a0, mid, mid, a1
            todo += [(a0, mid), (mid, a1)]


def max_similarity_table(Z, plan, matmul_precision="float32", algorithm="matmul", progress=None):
    """Best matches between every ordered pair of images of one feature set.

    Parameters
    ----------
    Z : tensor of shape (N, L, C)
        Unit-norm patch features, on the host or on ``plan.device``.
    plan : Plan
        Device, tile size and whether the features are moved at once.
    matmul_precision : {"float32", "tf32", "bfloat16"}
        Inputs of the products; sums and maxima are float32 in every case.
        Off CUDA the input rounding of "tf32" and "bfloat16" is emulated.
    algorithm : {"matmul", "fused"}
        "matmul": torch matrix products, whose tiles are reduced afterwards;
        "fused": the Triton kernel of :mod:`._msm_fused`, which reduces each
        block of products where it is computed.
    progress : callable or None
        Called with the number of image pairs of each tile once it is
        queued (``N * (N - 1) / 2`` in all).

    Returns
    -------
    table : tensor of shape (N, L, N) on ``plan.device``
        ``table[i, p, j] = max_q Z[i, p] . Z[j, q]``, and ``-inf`` for ``i == j``.
        The other images are the last, contiguous axis, which the ``topk``
        of :func:`interval_average` runs along.
    """
    n, L, C = Z.shape
    device = plan.device
    dtype, rounding, product = _product_fn(matmul_precision, device)
    flat = Z.reshape(n * L, C)
    if rounding is not None:
        flat = rounding(flat.float())
    if plan.resident:
        flat = flat.to(device, dtype)

    def load(i0, i1):
        return flat[i0 * L : i1 * L].to(device, dtype, non_blocking=True)

    def sweep(step):
        # each unordered pair of images once, tile by tile; a row tile is
        # loaded once for all the column tiles it meets
        for a0, a1, b0, b1 in _triangle(0, n):
            for t0 in range(a0, a1, plan.block):
                t1 = min(a1, t0 + plan.block)
                rows = load(t0, t1)
                for u0 in range(b0, b1, plan.block):
                    u1 = min(b1, u0 + plan.block)
                    step(rows, load(u0, u1), t0, t1, u0, u1)
                    if progress is not None:
                        progress((t1 - t0) * (u1 - u0))

    if algorithm == "fused":
        table = torch.full((n, L, n), -math.inf, dtype=torch.float32, device=device)

        def fused(rows, cols, t0, t1, u0, u1):
            pairs = _msm_fused.all_pairs(t0, t1, u0, u1, device)
            _msm_fused.launch(rows, cols, table, pairs, t0, u0, L, C, matmul_precision)

        if plan.resident:  # one launch for every pair i < j
            fused(flat, flat, 0, n, 0, n)
            if progress is not None:
                progress(n * (n - 1) // 2)
        else:
            sweep(fused)
        return table

    table = torch.empty((n, L, n), dtype=torch.float32, device=device)

    def reduce(rows, cols, t0, t1, u0, u1):
        prod = product(rows, cols).view(t1 - t0, L, u1 - u0, L)
        table[t0:t1, :, u0:u1] = prod.amax(dim=3)
        table[u0:u1, :, t0:t1] = prod.amax(dim=1).permute(1, 2, 0)

    with _allow_tf32(matmul_precision, device):
        sweep(reduce)
    idx = torch.arange(n, device=device)
    table[idx, :, idx] = -math.inf
    return table


def cross_similarity_table(Q, P, plan, matmul_precision="float32", progress=None, out=None):
    """Best matches of new images ``Q`` in the pool images ``P`` (novelty scoring).

    Parameters
    ----------
    Q : tensor of shape (m, L, C)
        Unit-norm patch features of the images to score.
    P : tensor of shape (N, Lp, C)
        Unit-norm patch features of the pool (the scorers). A scorer may have
        more patches than a scored image: its own and those of its turned
        copies (``Lp = (1 + n_turns) * L``), or those of its copies alone.
    plan : Plan
        Made with ``n=m, n_cols=N``: device, tile size, residency.
    matmul_precision : {"float32", "tf32", "bfloat16"}
        As in :func:`max_similarity_table`.
    progress : callable or None
        Called with the number of image pairs of each tile, counted in
        ``L x L`` products (``m * N * Lp / L`` in all).
    out : tensor of shape (m, L, N) or None
        A table to update: each entry becomes the larger of its value and
        the best match in ``P`` (the turned copies of a batch's images,
        maximised into the batch's own table).

    Returns
    -------
    table : tensor of shape (m, L, N) on ``plan.device``
        ``table[i, p, j] = max_q Q[i, p] . P[j, q]``: row ``i`` is the row a
        new image would have in the table of the batch ``P + {Q[i]}``, so its
        interval average is the same. ``out`` when given.
    """
    m, L, C = Q.shape
    N, Lp = P.shape[:2]
    device = plan.device
    dtype, rounding, product = _product_fn(matmul_precision, device)
    q, p = Q.reshape(m * L, C), P.reshape(N * Lp, C)
    if rounding is not None:
        q, p = rounding(q.float()), rounding(p.float())
    if plan.resident:
        q, p = q.to(device, dtype), p.to(device, dtype)
    table = torch.empty((m, L, N), dtype=torch.float32, device=device) if out is None else out
    b = plan.block
    rb = min(m, b)
    # Few new images (one part on a line): the tile's area goes to the pool's side
    # rather than to rows that do not exist, so a set is a few large products.
    # Wider scorers (turned copies): as many fewer of them per tile.
    cb = max(1, (max(b, (b * b) // rb) if plan.resident else b) * L // Lp)
    with _allow_tf32(matmul_precision, device):
        for t0 in range(0, m, rb):  # a tile of new images against every tile of the pool
            t1 = min(m, t0 + rb)
            rows = q[t0 * L : t1 * L].to(device, dtype, non_blocking=True)
            for u0 in range(0, N, cb):
                u1 = min(N, u0 + cb)
                cols = p[u0 * Lp : u1 * Lp].to(device, dtype, non_blocking=True)
                best = product(rows, cols).view(t1 - t0, L, u1 - u0, Lp).amax(dim=3)
                if out is None:
                    table[t0:t1, :, u0:u1] = best
                else:
                    here = table[t0:t1, :, u0:u1]
                    torch.maximum(here, best, out=here)
                if progress is not None:
                    progress((t1 - t0) * (u1 - u0) * Lp // L)
    return table


def local_similarity_table(Z, grid, radius, P=None, matmul_precision="float32"):
    """Best matches within ``radius`` patches of the same grid position (aligned parts).

    ``table[i, p, j] = max Z[i, p] . S[j, q]`` over the positions ``q`` of
    the scorer images ``S`` (``P``, or ``Z`` itself when ``P`` is None) with
    ``|row(q) - row(p)| <= radius`` and ``|col(q) - col(p)| <= radius``;
    ``radius=0`` compares each patch with the same position only. For every
    offset ``d`` of the window and every grid row, the patches at ``p`` and
    ``p + d`` of all images form one batched product (a ``n x n_scorers``
    Gram matrix per position), so the cost is ``(2 radius + 1)**2 / L`` of
    global matching's products. When the images score each other, the
    product for ``d`` also gives, transposed, the matches for ``-d``, so
    only half of the offsets are multiplied.

    Off CUDA, and for "bfloat16" everywhere, the rounding of "tf32" and
    "bfloat16" inputs is emulated and the products are float32.

    Returns
    -------
    table : tensor of shape (n, L, n_scorers) on ``Z``'s device
        ``-inf`` for ``i == j`` when the images score each other. A view
        whose last axis is contiguous (what :func:`interval_average` reads).
    """
    n, L, C = Z.shape
    h, w = grid
    S = Z if P is None else P
    m = len(S)
    rounding = {"tf32": round_tf32, "bfloat16": round_bf16}.get(matmul_precision)
    A, B = (Z.float(), S.float()) if rounding is None else (rounding(Z.float()), rounding(S.float()))
    # positions first: one grid row of one offset is a contiguous batch of Gram matrices
    A = A.view(n, h, w, C).permute(1, 2, 0, 3).contiguous()  # (h, w, n, C)
    B = A.transpose(2, 3) if P is None else B.view(m, h, w, C).permute(1, 2, 3, 0).contiguous()  # (h, w, C, m)
    best = torch.full((h, w, n, m), -math.inf, dtype=torch.float32, device=Z.device)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    if P is None:  # (dy, dx) and (-dy, -dx) come from one product
        offsets = [(dy, dx) for dy, dx in offsets if (dy, dx) >= (0, 0)]
    with _allow_tf32(matmul_precision, Z.device):
        for dy, dx in offsets:
            x0, x1 = max(0, -dx), min(w, w - dx)  # columns p whose column + dx is on the grid
            if x0 >= x1:
                continue
            for y in range(max(0, -dy), min(h, h - dy)):
                gram = A[y, x0:x1] @ B[y + dy, x0 + dx : x1 + dx]  # (wx, n, m)
                here = best[y, x0:x1]
                torch.maximum(here, gram, out=here)
                if P is None and (dy, dx) != (0, 0):  # the same products seen from p + d
                    there = best[y + dy, x0 + dx : x1 + dx]
                    torch.maximum(there, gram.transpose(1, 2), out=there)
    table = best.view(L, n, m).permute(1, 0, 2)
    if P is None:
        idx = torch.arange(n, device=Z.device)
        table[idx, :, idx] = -math.inf
    return table


def interval_average(table, k_min, k_max):
    """Mean of the distances of rank ``[k_min, k_max)`` over the other images.

    ``table`` holds dot products (larger = closer) with ``-inf`` on the
    diagonal, so the ``k_max <= N - 1`` best matches never include the image
    itself. Only those ``k_max`` values are selected (``topk``), not a full
    sort. Returns a tensor of shape (N, L).
    """
    best = torch.topk(table, k_max, dim=2, largest=True, sorted=True).values[..., k_min:k_max]
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0))
    return dist.mean(dim=2)


def drop_repeats(table, scores, ratio, n_batch, bounds):
    """Scores of images that share their most anomalous patch with other images, without those images.

    Mutual scoring assumes a defect is rare: when several images of a batch
    carry the same defect, they vouch for each other. For each image ``i``,
    take its most anomalous patch ``p_i``, the one whose median distance to
    its scorers is the largest, and the distances ``d_ij`` of its best match
    in every other image ``j`` (both medians: the lower one). Two
    images of the batch are *twins* when each is closer to the other at its
    own most anomalous patch than ``ratio`` times the median of its
    distances to all the other images (``d_ij < ratio * median_j d_ij`` and
    ``d_ji < ratio * median_i d_ji``). An image with twins, fewer than half
    of its scorers, is scored again by the other scorers only (its interval
    bounds follow the smaller count); a defect shared by half of the scorers
    or more is what the batch looks like and drops nothing. Columns beyond
    ``n_batch`` (known-normal references) are never dropped.

    Parameters
    ----------
    table : tensor of shape (n, L, n_cols)
        Dot products of best matches, ``-inf`` where ``j == i``.
    scores : tensor of shape (n, L)
        Interval averages of ``table``, replaced where an image has twins.
    ratio : float in (0, 1)
    n_batch : int
        The first ``n_batch`` columns are the batch's images (``n_batch == n``).
    bounds : callable
        ``bounds(n_images) -> (k_min, k_max)`` for an image among
        ``n_images`` (itself included).

    Returns
    -------
    scores : tensor of shape (n, L)
        ``scores`` with the rows of images that have twins replaced.
    """
    n, L, n_cols = table.shape
    m = n_cols - 1  # scorers of each image; its own column is -inf
    rows = torch.arange(n, device=table.device)
    # The top patch: the farthest from its median scorer (the lower median of the m distances is
    # the dot product of ascending rank m - (m - 1) // 2 after the -inf). Not the largest score:
    # a defect that enough twins vouch for scores low, which is the problem.
    typical = torch.kthvalue(table, m - (m - 1) // 2 + 1, dim=2).values  # (n, L)
    best = table[rows, typical.argmin(dim=1)]  # (n, n_cols): best matches of each image's top patch
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0))  # +inf for the image itself
    # the lower median of the n_cols - 1 others: the image's own +inf sorts last
    median = torch.kthvalue(dist, (m - 1) // 2 + 1, dim=1).values
    close = dist[:, :n_batch] < ratio * median[:, None]
    twins = close & close.T
    counts = twins.sum(dim=1)
    out = scores.clone()
    for i in torch.nonzero((counts > 0) & (2 * counts <= n_cols - 1)).flatten().tolist():
        keep = torch.ones(n_cols, dtype=torch.bool, device=table.device)
        keep[:n_batch] = ~twins[i]
        k_min, k_max = bounds(n_cols - int(counts[i]))
        out[i] = interval_average(table[i : i + 1][:, :, keep], k_min, k_max)[0]
    return out
