"""Readers for industrial anomaly detection datasets and a synthetic generator.

In the MuSc setting every category's *test* set is one unlabeled batch: the
readers below list its images, ground-truth masks and labels, in a stable order.

Order convention (all readers)
------------------------------
Images are sorted by defect type, with ``"good"`` (the normal images) first and
the other defect types after it in alphabetical order; within a defect type,
files are sorted by name, numbers compared as numbers (``"2.png"`` before
``"10.png"``). The position of an image therefore depends only on its defect
type and file name, never on the file system.

Masks
-----
The readers return mask *paths*; :func:`load_masks` reads them as one binary
``(n_images, H, W)`` uint8 array (0 = normal, 1 = anomalous), resized with
nearest-neighbour interpolation. Normal images get all-zero masks of their
image's size. Images and masks are read by :mod:`sklearn_musc.images`,
as the model reads images (an EXIF orientation is applied to both).

Supported layouts
-----------------
* MVTec AD (:func:`load_mvtec`): ``ROOT/<category>/test/<defect>/NNN.png`` and
  ``ROOT/<category>/ground_truth/<defect>/NNN_mask.png``; ``good`` has no masks.
* VisA (:func:`load_visa`): ``ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG``,
  ``ROOT/<category>/Data/Masks/Anomaly/*.png`` and, optionally, the split file
  ``ROOT/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``).
* MVTec 3D-AD (:func:`load_mvtec3d`): ``ROOT/<category>/<split>/<defect>/{rgb,xyz,gt}/NNN.*``;
  ``paths`` are the rgb images, ``xyz_paths`` the organized point clouds (read by
  :func:`read_xyz` with ``tifffile``; 0 = no point).
* BTAD (:func:`load_btad`): ``ROOT/<category>/test/{ok,ko}/*.{bmp,png}`` and
  ``ROOT/<category>/ground_truth/ko/<stem>.{png,bmp}``.

:func:`make_synthetic_defects` draws small synthetic batches (textures or
objects with scratches, spots and missing parts) for demos and tests, and
:func:`save_synthetic_defects` writes one in the MVTec AD layout.
"""

from ._masks import load_masks
from ._readers import list_categories, load_btad, load_mvtec, load_mvtec3d, load_visa, read_xyz
from ._synthetic import make_synthetic_defects, save_synthetic_defects

__all__ = [
    "list_categories",
    "load_btad",
    "load_masks",
    "load_mvtec",
    "load_mvtec3d",
    "load_visa",
    "make_synthetic_defects",
    "read_xyz",
    "save_synthetic_defects",
]
