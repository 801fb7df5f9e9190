"""The colormaps of every overlay: matplotlib's ``jet`` built in, so outputs never depend on matplotlib.

:func:`lookup_table` turns a colormap (``"jet"``, another matplotlib name, a
matplotlib Colormap or an array of colours) into an (n, 3) float table; the
built-in ``jet`` is always used for ``"jet"``, whether or not matplotlib is
installed, so an overlay is the same bytes on every machine.
The one overlay renderer, :func:`sklearn_musc.plotting.anomaly_map_rgb`,
colours with these tables (the command line's overlays too).
"""

import numpy as np

__all__ = ["INSTALL_HINT", "jet_table", "lookup_table", "unit_scale"]

INSTALL_HINT = "pip install sklearn-musc[examples]"

# matplotlib's "jet" segments: (x, value) breakpoints of each channel.
_JET_SEGMENTS = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)


def jet_table(n=256):
    """matplotlib's jet colormap as an (n, 3) float array in [0, 1], computed with numpy only."""
    x = np.linspace(0.0, 1.0, n)
    channels = []
    for segments in _JET_SEGMENTS:
        xp, fp = zip(*segments)
        channels.append(np.interp(x, xp, fp))
    return np.stack(channels, axis=1)


def lookup_table(cmap, n=256):
    """An (n_colors, 3) float lookup table in [0, 1] for ``cmap``.

    ``"jet"`` is built in; other names and matplotlib Colormaps need
    matplotlib; an array of shape (n_colors >= 2, 3 or 4), uint8 or float in
    [0, 1], is used as it is.
    """
    if isinstance(cmap, np.ndarray) or isinstance(cmap, (list, tuple)):
        lut = np.asarray(cmap)
        if lut.ndim != 2 or lut.shape[1] not in (3, 4) or len(lut) < 2:
            raise ValueError(
                f"a colormap array must have shape (n_colors >= 2, 3 or 4), got {lut.shape}"
            )
        lut = lut[:, :3]
        if lut.dtype == np.uint8:
            return lut.astype(np.float64) / 255.0
        lut = lut.astype(np.float64)
        if not np.all(np.isfinite(lut)) or lut.min() < 0 or lut.max() > 1:
            raise ValueError("a float colormap array must hold values in [0, 1]")
        return lut
    if isinstance(cmap, str) and cmap == "jet":
        return jet_table(n)
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            f"the colormap {cmap!r} needs matplotlib (only 'jet' is built in); install it "
            f"with: {INSTALL_HINT}"
        ) from None
    if isinstance(cmap, str):
        colormap = matplotlib.colormaps[cmap]
    else:
        colormap = cmap  # a matplotlib Colormap
    return np.asarray(colormap(np.linspace(0.0, 1.0, n)))[:, :3]


def unit_scale(values, vmin, vmax):
    """Values mapped to [0, 1] by (vmin, vmax), clipped, in their own float dtype.

    A zero range (``vmin == vmax``) maps values above it to 1 and the others to 0.
    """
    if vmax > vmin:
        return np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    return (values > vmin).astype(values.dtype)
