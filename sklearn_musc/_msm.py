"""Mutual-scoring kernels (SPEC section 3) on torch tensors.

For unit vectors ``||x - y||^2 = 2 - 2 x.y``, so the nearest patch of image j
to a patch of image i is the one with the largest dot product. One matrix
product per pair of image blocks gives the dot products of all their patch
pairs; its row maxima serve the pair (i, j) and its column maxima the pair
(j, i), so each unordered pair of images costs one product.
"""

import math

import torch

# Bytes of one float32.
_F32 = 4


def block_images(n_patches, block_bytes):
    """Images per block so that one block-pair product fits ``block_bytes``."""
    return max(1, int(math.sqrt(block_bytes / _F32)) // n_patches)


def max_similarity_table(Z, block):
    """Table of best matches between every ordered pair of images.

    Parameters
    ----------
    Z : tensor of shape (N, L, C)
        Unit-norm patch features of one feature set.
    block : int
        Images per block; a product covers ``block * L`` rows by ``block * L``
        columns.

    Returns
    -------
    table : tensor of shape (N, N, L)
        ``table[i, j, p] = max_q Z[i, p] . Z[j, q]``, and ``-inf`` for ``i == j``.
    """
    n, L, C = Z.shape
    table = torch.empty((n, n, L), dtype=Z.dtype, device=Z.device)
    flat = Z.reshape(n * L, C)
    for a0 in range(0, n, block):
        a1 = min(n, a0 + block)
        rows = flat[a0 * L : a1 * L]
        for b0 in range(a0, n, block):
            b1 = min(n, b0 + block)
            prod = (rows @ flat[b0 * L : b1 * L].T).view(a1 - a0, L, b1 - b0, L)
            # rows of a: best match in each image of b
            table[a0:a1, b0:b1] = prod.amax(dim=3).transpose(1, 2)
            if b0 != a0:
                # patches of b: best match in each image of a, from the same product
                table[b0:b1, a0:a1] = prod.amax(dim=1).transpose(0, 1)
    idx = torch.arange(n, device=Z.device)
    table[idx, idx] = -math.inf
    return table


def interval_average(table, k_min, k_max):
    """Mean of the distances of rank ``[k_min, k_max)`` over the other images.

    ``table`` holds dot products (larger = closer) with ``-inf`` on the
    diagonal, so the ``k_max`` best matches never include the image itself as
    long as ``k_max <= N - 1``. Only those ``k_max`` values are selected
    (``topk``), not a full sort.

    Returns a tensor of shape (N, L).
    """
    best = torch.topk(table, k_max, dim=1, largest=True, sorted=True).values[:, k_min:k_max]
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0))
    return dist.mean(dim=1)


def interval_bounds(n_images, topmin_min, topmin_max):
    """``(k_min, k_max)`` for a batch of ``n_images`` (SPEC's max(1, k) fix)."""
    others = n_images - 1
    k_max = max(1, int(math.floor(others * topmin_max)))
    k_min = min(int(math.floor(others * topmin_min)), k_max - 1)
    return k_min, k_max
