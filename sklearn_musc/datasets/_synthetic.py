"""A procedural generator of small industrial batches with defects, and its writer to the MVTec AD layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch, check_random_state

from .._validation import check_size

_DEFECT_KINDS = ("scratch", "spot", "missing")


def _smooth_noise(rng, n, size, cells):
    """(n, H, W) smooth noise in about [-1, 1]: bilinear upsampling of a coarse grid."""
    h, w = size
    coarse = rng.uniform(-1.0, 1.0, size=(n, cells + 1, cells + 1))
    y = np.linspace(0, cells, h)
    x = np.linspace(0, cells, w)
    y0 = np.minimum(y.astype(int), cells - 1)
    x0 = np.minimum(x.astype(int), cells - 1)
    fy = (y - y0)[None, :, None]
    fx = (x - x0)[None, None, :]
    fy = fy * fy * (3 - 2 * fy)  # smoothstep: no visible grid creases
    fx = fx * fx * (3 - 2 * fx)
    a = coarse[:, y0][:, :, x0]
    b = coarse[:, y0][:, :, x0 + 1]
    c = coarse[:, y0 + 1][:, :, x0]
    d = coarse[:, y0 + 1][:, :, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _texture_batch(rng, n, size):
    """Woven fabric: alternating warp/weft threads, jittered and lit per image."""
    h, w = size
    side = min(h, w)
    period = max(side / 10.0, 4.0)
    shift = rng.uniform(-0.25, 0.25, size=(n, 2)) * period
    # separable pieces on (n, H, 1) and (n, 1, W), broadcast once
    y = np.arange(h)[None, :, None] + shift[:, 0, None, None]
    x = np.arange(w)[None, None, :] + shift[:, 1, None, None]
    u = 2 * np.pi * x / period
    v = 2 * np.pi * y / period
    warp = np.sqrt(np.abs(np.sin(u)))
    weft = np.sqrt(np.abs(np.sin(v)))
    # a thread crossing: warp on top in one half-cell, weft in the other (basket weave)
    cell = (np.floor(x / (period / 2)) + np.floor(y / (period / 2))) % 2 == 0
    weave = np.where(cell, warp * (0.75 + 0.25 * np.abs(np.cos(v))),
                     weft * (0.75 + 0.25 * np.abs(np.cos(u))))
    lum = 0.45 + 0.35 * weave
    lum = lum + 0.05 * _smooth_noise(rng, n, size, 4)
    gain = rng.uniform(0.9, 1.1, size=(n, 1, 1))
    tilt = rng.uniform(-0.06, 0.06, size=(n, 2))
    yy = np.linspace(-0.5, 0.5, h)[None, :, None]
    xx = np.linspace(-0.5, 0.5, w)[None, None, :]
    light = 1 + tilt[:, 0, None, None] * yy + tilt[:, 1, None, None] * xx
    lum = lum * gain * light
    colour = np.array([0.78, 0.66, 0.50])
    images = lum[..., None] * colour
    images += 0.012 * rng.standard_normal(images.shape, dtype=np.float32)
    support = np.ones((n, h, w), dtype=bool)
    background = np.array([0.06, 0.05, 0.05])  # what a hole shows
    return images, support, background, None


def _object_batch(rng, n, size):
    """A metallic 'bottle top' disk on a uniform background, shifted and lit per image."""
    h, w = size
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h / 2 + rng.uniform(-0.03, 0.03, size=n) * side
    cx = w / 2 + rng.uniform(-0.03, 0.03, size=n) * side
    radius = side * rng.uniform(0.30, 0.32, size=n)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = np.hypot(dy, dx) / radius[:, None, None]
    disk = r <= 1.0
    # shading: a lit dome, a darker rim and a raised inner ring
    light_dir = np.array([-0.5, -0.5])
    dome = 0.55 + 0.25 * (1 - r**2).clip(0) ** 0.5
    dome += 0.12 * (dy * light_dir[0] + dx * light_dir[1]) / radius[:, None, None] * -0.5
    ring = np.exp(-(((r - 0.62) / 0.05) ** 2)) * 0.12
    rim = np.clip((r - 0.88) / 0.12, 0, 1) * -0.25
    lum = dome + ring + rim + 0.02 * _smooth_noise(rng, n, size, 5)
    lum = lum * rng.uniform(0.93, 1.07, size=(n, 1, 1))
    obj_colour = np.array([0.80, 0.84, 0.92])
    bg_colour = np.array([0.16, 0.17, 0.18])
    bg = bg_colour * rng.uniform(0.9, 1.1, size=(n, 1, 1, 1))
    # soft edge over about one pixel, to avoid aliasing
    edge = np.clip((1.0 - r) * radius[:, None, None] + 0.5, 0, 1)[..., None]
    images = edge * lum[..., None] * obj_colour + (1 - edge) * bg
    images += 0.012 * rng.standard_normal(images.shape, dtype=np.float32)
    geometry = np.stack([cy, cx, radius], axis=1)
    return images, disk, bg_colour, geometry


def _blob(rng, yy, xx, cy, cx, radius):
    """An irregular blob: a disk whose radius wobbles with the angle."""
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.04, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= radius * (1 + wobble)


def _draw_defect(rng, image, support, kind, background, geometry, side):
    """Draw one defect in place on ``image`` (H, W, 3); return its mask (H, W) bool."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # a centre: inside the object (or anywhere for textures), away from the border
    if geometry is not None:
        cy0, cx0, radius = geometry
        rho = radius * np.sqrt(rng.uniform(0, 0.45**2))
        phi = rng.uniform(0, 2 * np.pi)
        cy, cx = cy0 + rho * np.sin(phi), cx0 + rho * np.cos(phi)
    else:
        cy = rng.uniform(0.2, 0.8) * h
        cx = rng.uniform(0.2, 0.8) * w
    if kind == "scratch":
        length = rng.uniform(0.12, 0.18) * side
        width = max(0.02 * side, 1.5)
        angle = rng.uniform(0, np.pi)
        ey, ex = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        # distance to the segment (cy - ey, cx - ex) -> (cy + ey, cx + ex), slightly curved
        t = ((yy - cy) * ey + (xx - cx) * ex) / (ey**2 + ex**2)
        t = np.clip(t, -1, 1)
        bend = 0.08 * length * (1 - t**2)
        py = cy + t * ey - np.cos(angle) * bend
        px = cx + t * ex + np.sin(angle) * bend
        mask = np.hypot(yy - py, xx - px) <= width / 2
        dark = rng.uniform() < (0.5 if geometry is None else 0.75)
        colour = np.array([0.05, 0.05, 0.06]) if dark else np.array([1.0, 1.0, 0.97])
        alpha = 0.9
    elif kind == "spot":
        radius = rng.uniform(0.04, 0.07) * side
        mask = _blob(rng, yy, xx, cy, cx, radius)
        palette = np.array([[0.62, 0.06, 0.05], [0.06, 0.40, 0.08], [0.08, 0.07, 0.06],
                            [0.12, 0.16, 0.75]])
        colour = palette[rng.integers(len(palette))]
        alpha = 0.85
    elif kind == "missing":
        if geometry is not None:
            # a bite out of the disk's edge
            cy0, cx0, radius = geometry
            phi = rng.uniform(0, 2 * np.pi)
            cy = cy0 + 0.95 * radius * np.sin(phi)
            cx = cx0 + 0.95 * radius * np.cos(phi)
            mask = _blob(rng, yy, xx, cy, cx, rng.uniform(0.09, 0.12) * side) & support
        else:
            mask = _blob(rng, yy, xx, cy, cx, rng.uniform(0.05, 0.08) * side)
        colour = np.asarray(background)
        alpha = 1.0
    else:  # pragma: no cover - checked by the caller
        raise ValueError(kind)
    image[mask] = (1 - alpha) * image[mask] + alpha * colour
    image[mask] += rng.normal(0.0, 0.012, size=image[mask].shape)
    return mask


def make_synthetic_defects(
    n_images=12,
    n_anomalous=3,
    image_size=128,
    kind="texture",
    defects=_DEFECT_KINDS,
    random_state=None,
    n_repeated=0,
):
    """A small synthetic batch of industrial images with defects and their masks.

    Normal images are a woven texture (``kind="texture"``) or a shaded metal
    disk, a "bottle top", on a uniform background (``kind="object"``), with a
    small random shift, lighting change and noise per image. Anomalous images
    carry one defect each, at a random position: a thin dark or bright
    ``"scratch"``, a coloured ``"spot"`` (stain), or a ``"missing"`` part (a
    hole in the texture, a bite out of the disk's edge). Defects span about 5
    to 15 % of the image side, enough for a human or a ViT to see them.

    Parameters
    ----------
    n_images : int, default=12
        Number of images.
    n_anomalous : int, default=3
        Number of anomalous images among them, at random positions in the batch.
    image_size : int or (int, int), default=128
        Side, or (height, width), of the images; at least 16.
    kind : {"texture", "object"}, default="texture"
        The product shown.
    defects : sequence of {"scratch", "spot", "missing"}, default=all three
        The defect kinds, used in turn (shuffled) over the anomalous images.
    random_state : int, numpy.random.Generator, RandomState or None, default=None
        Seed: the same seed gives the same batch.
    n_repeated : int, default=0
        How many of the anomalous images carry one and the same defect: drawn
        once (the first kind of ``defects``) and copied, pixel for pixel, to
        the same place of each of them, as a fixture or a tool that marks
        every part would. Their defect type is ``"<kind>-repeated"``. The
        batch that mutual scoring finds hardest: the copies vouch for each
        other (``MutualScoringDetector(repeat_ratio=...)``).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (n_images, H, W, 3) uint8, ``masks`` (n_images, H, W) uint8
        in {0, 1}, ``labels`` (n_images,) int (1 = anomalous), ``defect_types``
        (list of str: ``"good"``, ``"scratch"``, ``"spot"``, ``"missing"``) and
        ``kind``.

    Examples
    --------
    >>> from sklearn_musc.datasets import make_synthetic_defects
    >>> data = make_synthetic_defects(n_images=6, n_anomalous=2, image_size=64,
    ...                               kind="object", random_state=0)
    >>> data.images.shape, data.masks.shape, int(data.labels.sum())
    ((6, 64, 64, 3), (6, 64, 64), 2)
    >>> bool((data.masks.reshape(6, -1).max(axis=1) == data.labels).all())
    True
    """
    n_images = int(n_images)
    n_anomalous = int(n_anomalous)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if not 0 <= n_anomalous <= n_images:
        raise ValueError(f"n_anomalous must lie in [0, n_images={n_images}], got {n_anomalous}")
    n_repeated = int(n_repeated)
    if not 0 <= n_repeated <= n_anomalous:
        raise ValueError(f"n_repeated must lie in [0, n_anomalous={n_anomalous}], got {n_repeated}")
    size = check_size(image_size, "image_size")
    if min(size) < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size!r}")
    if kind not in ("texture", "object"):
        raise ValueError(f"kind must be 'texture' or 'object', got {kind!r}")
    if isinstance(defects, str):
        defects = (defects,)
    defects = tuple(defects)
    unknown = [d for d in defects if d not in _DEFECT_KINDS]
    if not defects or unknown:
        raise ValueError(f"defects must be a non-empty subset of {_DEFECT_KINDS}, got {defects!r}")
    rng = _as_generator(random_state)

    if kind == "texture":
        images, support, background, geometry = _texture_batch(rng, n_images, size)
    else:
        images, support, background, geometry = _object_batch(rng, n_images, size)

    anomalous = np.sort(rng.choice(n_images, size=n_anomalous, replace=False))
    cycle = [defects[i % len(defects)] for i in range(n_anomalous)]
    order = rng.permutation(n_anomalous)
    kinds = [cycle[j] for j in order]
    masks = np.zeros((n_images,) + size, dtype=np.uint8)
    defect_types = ["good"] * n_images
    # n_repeated of the anomalous images share one defect instead of drawing their own
    copies = rng.choice(anomalous, size=n_repeated, replace=False) if n_repeated else anomalous[:0]
    for index, defect in zip(anomalous, kinds):
        if index in copies:
            continue
        geom = None if geometry is None else geometry[index]
        mask = _draw_defect(
            rng, images[index], support[index], defect, background, geom, min(size)
        )
        masks[index] = mask
        defect_types[index] = defect
    if n_repeated:  # drawn once on a copy of the first image, then pasted pixel for pixel
        first = copies[0]
        canvas = images[first].copy()
        geom = None if geometry is None else geometry[first]
        mask = _draw_defect(rng, canvas, support[first], defects[0], background, geom, min(size)).astype(bool)
        for index in copies:
            images[index][mask] = canvas[mask]
            masks[index] = mask
            defect_types[index] = f"{defects[0]}-repeated"
    labels = np.zeros(n_images, dtype=np.int64)
    labels[anomalous] = 1
    images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return Bunch(images=images, masks=masks, labels=labels, defect_types=defect_types, kind=kind)


def _as_generator(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    state = check_random_state(random_state)  # a RandomState: derive a seed from it
    return np.random.default_rng(state.randint(np.iinfo(np.int32).max))


def save_synthetic_defects(directory, data=None, overwrite=False, **kwargs):
    """Write a synthetic batch as PNGs in the MVTec AD layout of one category.

    Parameters
    ----------
    directory : str or path-like
        The category folder ``ROOT/<category>``: images go to
        ``directory/test/<defect>/NNN.png`` and masks of anomalous images to
        ``directory/ground_truth/<defect>/NNN_mask.png``, numbered from 000 in
        each defect type in the batch's order. ``load_mvtec(ROOT, category)``
        reads them back (in its own order: ``good`` first).
    data : sklearn.utils.Bunch, optional
        The output of :func:`make_synthetic_defects`; None draws one with
        ``**kwargs``.
    overwrite : bool, default=False
        Whether ``directory/test`` and ``directory/ground_truth`` may already
        exist; if True they are deleted first.
    **kwargs
        Passed to :func:`make_synthetic_defects` when ``data`` is None.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``paths`` and ``mask_paths`` (None for normal images) of the files
        written, in the batch's order, ``root`` (the parent of ``directory``),
        ``category`` (its name) and ``data`` (the batch).

    Raises
    ------
    FileExistsError
        If the folders exist and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_musc.datasets import load_mvtec, save_synthetic_defects
    >>> root = tempfile.mkdtemp()
    >>> saved = save_synthetic_defects(f"{root}/fabric", n_images=4, n_anomalous=1,
    ...                                image_size=32, random_state=0)
    >>> len(load_mvtec(saved.root, saved.category).paths)
    4
    """
    if data is None:
        data = make_synthetic_defects(**kwargs)
    elif kwargs:
        raise TypeError(f"pass either data or generator arguments, not both: {sorted(kwargs)}")
    directory = Path(directory)
    test_dir = directory / "test"
    gt_dir = directory / "ground_truth"
    existing = [p for p in (test_dir, gt_dir) if p.exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{', '.join(str(p) for p in existing)} already exist; pass overwrite=True "
                "to replace them"
            )
        for p in existing:
            shutil.rmtree(p)
    counters = {}
    paths, mask_paths = [], []
    for image, mask, defect in zip(data["images"], data["masks"], data["defect_types"]):
        number = counters.get(defect, 0)
        counters[defect] = number + 1
        image_path = test_dir / defect / f"{number:03d}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(image_path)
        paths.append(str(image_path))
        if defect == "good":
            mask_paths.append(None)
            continue
        mask_path = gt_dir / defect / f"{number:03d}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(mask_path)
        mask_paths.append(str(mask_path))
    return Bunch(
        paths=paths,
        mask_paths=mask_paths,
        root=str(directory.resolve().parent),
        category=directory.resolve().name,
        data=data,
    )
