"""Input checks shared by the estimators."""

import numbers

import numpy as np

from ._batch import FeatureSets, PatchTokens


def check_contamination(contamination):
    """Validate ``contamination``: "auto" or a float in (0, 0.5]."""
    if isinstance(contamination, str):
        if contamination != "auto":
            raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {contamination!r}")
        return contamination
    if (
        not isinstance(contamination, numbers.Real)
        or isinstance(contamination, bool)
        or not 0.0 < contamination <= 0.5
    ):
        raise ValueError(f"contamination must be 'auto' or a float in (0, 0.5], got {contamination!r}")
    return float(contamination)


def check_int_list(values, name, *, minimum=1, odd=False):
    """Validate a non-empty sequence of ints (``r_list``, ``k_list``)."""
    if isinstance(values, numbers.Integral):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < minimum:
            raise ValueError(f"{name} must hold ints >= {minimum}, got {values!r}")
        if odd and v % 2 == 0:
            raise ValueError(f"{name} must hold odd ints (a centred r x r window), got {values!r}")
    return tuple(int(v) for v in values)


def _as_float_array(X, what):
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {X.dtype}")
    if X.dtype.kind != "f":
        X = X.astype(np.float32)
    return X


def as_patch_tokens(X):
    """Accept :class:`PatchTokens` or a raw (N, n_layers, h, w, C) array."""
    if isinstance(X, PatchTokens):
        return X
    if isinstance(X, FeatureSets):
        raise TypeError("got FeatureSets, which LNAMDTransformer already produced; "
                        "pass it to MutualScoringDetector instead")
    X = _as_float_array(X, "tokens")
    if X.ndim != 5:
        raise ValueError(
            "tokens must have shape (n_images, n_layers, grid_h, grid_w, dim), "
            f"got an array of shape {X.shape}"
        )
    if min(X.shape) == 0:
        raise ValueError(f"tokens must not be empty, got shape {X.shape}")
    return PatchTokens(tokens=X)


def as_feature_sets(X):
    """Accept :class:`FeatureSets` or a raw (N, n_sets, h, w, C) array."""
    if isinstance(X, FeatureSets):
        return X
    if isinstance(X, PatchTokens):
        raise TypeError("got PatchTokens; aggregate them with LNAMDTransformer first")
    X = _as_float_array(X, "features")
    if X.ndim == 4:  # a single feature set
        X = X[:, None]
    if X.ndim != 5:
        raise ValueError(
            "features must have shape (n_images, n_sets, grid_h, grid_w, dim) "
            f"or (n_images, grid_h, grid_w, dim), got an array of shape {X.shape}"
        )
    if min(X.shape) == 0:
        raise ValueError(f"features must not be empty, got shape {X.shape}")
    return FeatureSets(features=X, set_index=tuple((i, 0) for i in range(X.shape[1])))


def check_finite(array, what):
    """Raise when ``array`` (numpy or torch) holds NaN or infinity."""
    ok = bool(array.isfinite().all()) if hasattr(array, "isfinite") else bool(np.isfinite(array).all())
    if not ok:
        raise ValueError(f"{what} contains NaN or infinity")
