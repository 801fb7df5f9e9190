"""Fused mutual-scoring kernel (Triton): products and maxima in one pass.

:func:`sklearn_musc._msm.max_similarity_table` writes each product tile to
memory and reads it back twice (row and column maxima). At the paper's size
that is terabytes of traffic on a GPU, as much time as the products
themselves. Here each Triton program multiplies one block of patches of
image ``i`` with one block of image ``j``, keeps the block in registers and
folds its row maxima into ``table[i, :, j]`` and its column maxima into
``table[j, :, i]`` with atomic maxima (order-free, so the result does not
depend on scheduling). Each unordered pair of images is still multiplied
once.

Triton is optional (CUDA builds of torch bring it). In a process started
with ``TRITON_INTERPRET=1`` (Triton fixes the mode when it is imported) the
same kernel runs on CPU tensors in Triton's interpreter, which is how the
tests check it on machines without a GPU. ``tools/inspect_fused.py`` (a
developer tool, not shipped) compiles it for a GPU architecture without one,
to check what the compiler makes of it.
"""

# Annotations stay strings: Triton reads "tl.constexpr" from them, and the
# module still imports where Triton is missing.
from __future__ import annotations

import inspect
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds: the "matmul" algorithm only
    triton = tl = None

# (BM, BN, BK, num_warps, num_stages) tried by the autotuner on CUDA. Tensor
# cores (tf32, bfloat16): the usual Hopper/Ampere matmul shapes; a shape
# over the shared memory of the GPU is discarded by Triton itself. float32
# runs on the CUDA cores, whose accumulators need smaller blocks to stay in
# registers (larger ones spill, as tools/inspect_fused.py shows).
CONFIGS = {
    "tensor_cores": (
        (128, 256, 64, 8, 3),
        (128, 256, 32, 8, 3),
        (128, 128, 64, 8, 4),
        (128, 128, 32, 4, 4),
        (64, 128, 64, 4, 4),
    ),
    "float32": (
        (128, 128, 16, 8, 3),
        (128, 64, 32, 8, 3),
        (64, 128, 32, 8, 3),
        (64, 64, 32, 4, 3),
    ),
}
# Small blocks under the interpreter: every mask path is exercised on tiny inputs.
_INTERPRET_BLOCK = (16, 16, 16)

_kernels = {}


def interpreting():
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device):
    """Why the fused kernel cannot run on ``device`` (None when it can)."""
    if triton is None:
        return "algorithm='fused' needs Triton (pip install triton; it comes with CUDA builds of torch)"
    if device.type != "cuda" and not interpreting():
        return f"algorithm='fused' needs a CUDA device (got {device}); use algorithm='matmul'"
    return None


def _pair_max(
    A, B, T, IA, JB, a_off, b_off, n_table, L,
    C: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One program: a (BM x BN) block of ``A[ia] @ B[jb].T`` and its maxima.

    ``A``, ``B``: features of the images ``a_off + ia`` and ``b_off + jb``
    (``L`` rows of ``C`` each); ``T``: the ``(n_table, L, n_table)`` table.
    Not decorated here: :func:`_kernel` applies ``triton.jit`` when it is
    first needed (the module imports without Triton).
    """
    pid = tl.program_id(0)
    nbm = tl.cdiv(L, BM)
    nbn = tl.cdiv(L, BN)
    pair = pid // (nbm * nbn)
    mb = (pid % (nbm * nbn)) // nbn
    nb = pid % nbn
    ia = tl.load(IA + pair)
    jb = tl.load(JB + pair)
    i = a_off + ia
    j = b_off + jb
    # Scalar int64 bases (N * L * C passes 2**31 at realistic sizes), int32
    # offsets inside one image: 64-bit offsets for whole tiles cost registers.
    a_img = A + ia.to(tl.int64) * (L * C)
    b_img = B + jb.to(tl.int64) * (L * C)
    rows = mb * BM + tl.arange(0, BM)
    cols = nb * BN + tl.arange(0, BN)
    row_ok = rows < L
    col_ok = cols < L
    ks = tl.arange(0, BK)
    a_ptr = a_img + rows[:, None] * C + ks[None, :]
    b_ptr = b_img + cols[:, None] * C + ks[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, C, BK):
        if C % BK == 0:
            a = tl.load(a_ptr + k0, mask=row_ok[:, None], other=0.0)
            b = tl.load(b_ptr + k0, mask=col_ok[:, None], other=0.0)
        else:
            k_ok = (k0 + ks) < C
            a = tl.load(a_ptr + k0, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptr + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC)
    acc = tl.where(row_ok[:, None] & col_ok[None, :], acc, float("-inf"))
    row_max = tl.max(acc, axis=1)
    col_max = tl.max(acc, axis=0)
    # table[i, p, j] and table[j, q, i]
    t_i = T + i.to(tl.int64) * (L * n_table)
    t_j = T + j.to(tl.int64) * (L * n_table)
    tl.atomic_max(t_i + rows * n_table + j, row_max, mask=row_ok, sem="relaxed")
    tl.atomic_max(t_j + cols * n_table + i, col_max, mask=col_ok, sem="relaxed")


def _kernel(configs=None):
    """The Triton kernel, built on first use (interpreted or compiled, as Triton was started).

    ``configs``: a key of :data:`CONFIGS` for the autotuned kernel, whose
    choices Triton (3.3 and later) keeps in its on-disk cache; None for the
    plain kernel.
    """
    if configs not in _kernels:
        kernel = triton.jit(_pair_max)
        if configs is not None:
            tried = [
                triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in CONFIGS[configs]
            ]
            # the on-disk cache of the choices came with Triton 3.3
            cache = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
            kernel = triton.autotune(tried, key=["L", "C", "PREC"], **cache)(kernel)
        _kernels[configs] = kernel
    return _kernels[configs]


def tuned_kernel(matmul_precision):
    """The autotuned kernel of a matmul precision (its ``best_config`` once it has run); needs Triton."""
    return _kernel("float32" if matmul_precision == "float32" else "tensor_cores")


def launch(A, B, T, pairs, a_off, b_off, L, C, matmul_precision):
    """Fold the maxima of ``A[ia] . B[jb]`` for every pair ``(ia, jb)`` into ``T``.

    ``pairs`` is an int32 tensor of shape (2, n_pairs) on the tensors' device.
    """
    prec = "tf32" if matmul_precision == "tf32" and A.is_cuda else "ieee"
    args = (A, B, T, pairs[0], pairs[1], a_off, b_off, T.shape[0], L)
    n_pairs = pairs.shape[1]
    if interpreting():
        bm, bn, bk = _INTERPRET_BLOCK
        grid = (n_pairs * triton.cdiv(L, bm) * triton.cdiv(L, bn),)
        _kernel()[grid](*args, C=C, BM=bm, BN=bn, BK=bk, PREC=prec)
    else:
        grid = lambda meta: (n_pairs * triton.cdiv(L, meta["BM"]) * triton.cdiv(L, meta["BN"]),)  # noqa: E731
        # fp fusion named: no multiply-add here for it to change, and Triton 3.9 warns when it is not
        tuned_kernel(matmul_precision)[grid](*args, C=C, PREC=prec, enable_fp_fusion=True)


def all_pairs(a0, a1, b0, b1, device):
    """int32 (2, n_pairs): local indices of every image of [a0, a1) with every one of [b0, b1).

    When the two ranges are the same, only the pairs ``i < j`` (each unordered
    pair once, no diagonal). Built without a boolean mask, whose size the host
    would have to wait for.
    """
    if (a0, a1) == (b0, b1):
        return torch.triu_indices(a1 - a0, a1 - a0, offset=1, device=device).to(torch.int32)
    ia = torch.arange(a1 - a0, device=device, dtype=torch.int32)
    jb = torch.arange(b1 - b0, device=device, dtype=torch.int32)
    return torch.cartesian_prod(ia, jb).T.contiguous()
