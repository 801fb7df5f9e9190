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
    """Validate a non-empty sequence of ints (``r_list``, ``k_list``, ``layers``); ``minimum=None``: any int."""
    if isinstance(values, numbers.Integral):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ValueError(f"{name} must hold ints, got {values!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} must hold ints >= {minimum}, got {values!r}")
        if odd and v % 2 == 0:
            raise ValueError(f"{name} must hold odd ints (a centred r x r window), got {values!r}")
    return tuple(int(v) for v in values)


def check_size(size, name):
    """Validate an image size: a positive int ``S`` (meaning ``(S, S)``) or a (height, width) pair.

    Returns
    -------
    size : (int, int)
    """
    given = size
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size, size)
    try:
        size = tuple(size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive "
                         f"ints, got {given!r}")
    return int(size[0]), int(size[1])


def _as_float_array(X, what):
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {X.dtype}")
    if X.dtype.kind != "f":
        X = X.astype(np.float32)
    return X


def as_float64(values, what):
    """``values`` (numpy, a list, or a torch tensor on any device, with grad, any dtype) as float64."""
    if hasattr(values, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, so convert in torch
        values = values.detach().cpu()
        values = (values.double() if values.is_floating_point() else values).numpy()
    try:
        values = np.asarray(values)
    except ValueError as exc:  # ragged lists
        raise ValueError(f"{what} must be one numeric array, got {type(values).__name__} ({exc})") from None
    if values.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be numeric, got dtype {values.dtype}")
    return values.astype(np.float64)


def check_finite_rows(array, what):
    """Raise, naming the first image, when rows of a float array hold NaN or infinity."""
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} contain NaN or infinity at {int(bad.sum())} of {len(array)} images "
                         f"(first: image {int(np.flatnonzero(bad)[0])})")


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


# --------------------------------------------------------------------------- parameters
#
# Each estimator lists its parameters in a class attribute
# ``_parameter_constraints`` (name -> list of constraints, the shape of
# scikit-learn's), and ``validate_params(self)`` checks them at fit with one
# message style: "<name> must be <what>, got <value!r>". A constraint is
# None (the value None), "boolean", "random_state", or an object with
# ``is_satisfied_by(value)`` and a ``str`` that says what it accepts. Numpy
# integers and floats count as numbers everywhere; booleans never do.


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class Interval:
    """Numbers of a kind (``numbers.Integral`` or ``numbers.Real``) between bounds (None: unbounded).

    ``closed`` is "both", "left", "right" or "neither". Real intervals take
    finite values only (no NaN, no infinity).
    """

    def __init__(self, kind, left, right, closed="both"):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value):
        if self.kind is numbers.Integral:
            if not _is_int(value):
                return False
        elif not _is_real(value) or not np.isfinite(value):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed not in ("both", "left")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed not in ("both", "right")):
                return False
        return True

    def __str__(self):
        what = "an int" if self.kind is numbers.Integral else "a float"
        left_in, right_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.left is None and self.right is None:
            return what if self.kind is numbers.Integral else "a finite float"
        if self.right is None:
            return f"{what} {'>=' if left_in else '>'} {self.left}"
        if self.left is None:
            return f"{what} {'<=' if right_in else '<'} {self.right}"
        return f"{what} in {'[' if left_in else '('}{self.left}, {self.right}{']' if right_in else ')'}"


class Options:
    """One of a set of values (strings)."""

    def __init__(self, *values):
        self.values = tuple(values)

    def is_satisfied_by(self, value):
        return isinstance(value, str) and value in self.values

    def __str__(self):
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)


class InstanceOf:
    """Instances of a type (bools excluded from numbers)."""

    def __init__(self, kind, what):
        self.kind, self.what = kind, what

    def is_satisfied_by(self, value):
        return isinstance(value, self.kind) and not (
            isinstance(value, (bool, np.bool_)) and self.kind is not bool)

    def __str__(self):
        return self.what


class Satisfies:
    """Values for which ``predicate(value)`` is true, described by ``what``."""

    def __init__(self, predicate, what):
        self.predicate, self.what = predicate, what

    def is_satisfied_by(self, value):
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def __str__(self):
        return self.what


def _int_sequence(value, minimum, odd):
    if _is_int(value):
        value = (value,)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return False
    value = tuple(value)
    return bool(value) and all(
        _is_int(v) and (minimum is None or v >= minimum) and (not odd or v % 2 == 1) for v in value
    )


def int_sequence(minimum=1, odd=False):
    """A non-empty sequence of ints (or one int), each ``>= minimum``, odd when asked."""
    what = "a non-empty sequence of " + ("odd " if odd else "") + "ints"
    if minimum is not None:
        what += f" >= {minimum}"
    return Satisfies(lambda v: _int_sequence(v, minimum, odd), what)


def _device(value):
    from ._device import DEVICE_PATTERN

    if type(value).__name__ == "device" and type(value).__module__.startswith("torch"):
        value = str(value)
    return isinstance(value, str) and DEVICE_PATTERN.match(value) is not None


DEVICE = Satisfies(_device, "'auto', 'cpu', 'cuda' or 'cuda:<index>'")

def _describe(constraint):
    if constraint is None:
        return ["None"]
    if constraint == "boolean":
        return ["True or False"]
    if constraint == "random_state":
        return ["an int", "a numpy.random.RandomState"]
    return [str(constraint)]


def _satisfied(constraint, value):
    if constraint is None:
        return value is None
    if constraint == "boolean":
        return isinstance(value, (bool, np.bool_))
    if constraint == "random_state":
        return _is_int(value) or isinstance(value, np.random.RandomState)
    return constraint.is_satisfied_by(value)


def validate_params(estimator):
    """Check every parameter of ``estimator`` against ``type(estimator)._parameter_constraints``.

    Raises ``ValueError("<name> must be <what>, got <value!r>")`` for the
    first parameter that satisfies none of its constraints.
    """
    for name, constraints in type(estimator)._parameter_constraints.items():
        value = getattr(estimator, name)
        if any(_satisfied(c, value) for c in constraints):
            continue
        options = [what for c in constraints for what in _describe(c)]
        what = options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]
        raise ValueError(f"{name} must be {what}, got {value!r}")


CONTAMINATION = [Options("auto"), Interval(numbers.Real, 0, 0.5, closed="right")]


# --------------------------------------------------------------------------- tags


def input_tags(tags, *, two_d_array=False, string=False, transformer=False):
    """scikit-learn >= 1.6 tags of an estimator whose inputs are not tables.

    The estimators take images (paths, PIL images, ``(N, H, W[, C])``
    arrays), token arrays ``(N, n_layers, h, w, C)`` or feature sets
    ``(N, n_sets, h, w, C)``: n-D arrays, declared ``three_d_array`` (the
    closest tag), and not ``two_d_array``, so that scikit-learn's
    ``check_estimator`` does not feed them tables. ``transformer`` adds
    transformer tags to an estimator that also transforms (the detector):
    its outputs are :class:`ImageScores`. The outputs of all of them are
    containers (tokens, feature sets, image scores): no dtype is preserved.
    """
    tags.input_tags.two_d_array = two_d_array
    tags.input_tags.three_d_array = not two_d_array
    tags.input_tags.string = string
    if transformer and tags.transformer_tags is None:
        from sklearn.utils import TransformerTags

        tags.transformer_tags = TransformerTags()
    if tags.transformer_tags is not None:
        tags.transformer_tags.preserves_dtype = []  # the outputs are containers, not arrays
    return tags
