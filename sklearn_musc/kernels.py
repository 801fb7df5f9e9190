"""The kernels behind the estimators, named for the benchmarks and studies that time or replay them.

The estimators are the API for users; this module is for those who measure
them. ``benchmarks/`` times the mutual-scoring kernels against the matmul rate
of the machine, and ``studies/`` replays them with settings no estimator
exposes (the few-shot study's cached similarity tables, the precision study's
CUDA-only precisions run on the CPU, the 3D cost study's stages one by one).
Here they are public on purpose, so no script reaches into a private module
(``tests/test_layout.py``). The kernels check little: callers pass what the
estimators would.

Mutual scoring (:class:`~sklearn_musc.MutualScoringDetector`):

* :func:`interval_bounds`: the (k_min, k_max) of the topmin interval for a batch size.
* :class:`Plan` and :func:`default_memory_budget`: how the products are tiled.
* :func:`max_similarity_table`: each image's best match in every other one.
* :func:`interval_average`: the interval average of the sorted best matches.
* :func:`score_batch`: one batch scored end to end, as ``fit`` runs it.
* :func:`tuned_kernel`: the autotuned fused Triton kernel (CUDA) of a matmul precision.
* :data:`PRECISIONS`, :data:`ALGORITHMS`: the values of ``matmul_precision`` and ``algorithm``.

3D (:class:`~sklearn_musc.PointCloudPatchTransformer`): :func:`remove_plane`,
:func:`largest_cluster`, :func:`unit_sphere`, :func:`fpfh`,
:func:`farthest_point_sampling`, :func:`ipg_groups`.

Devices: :func:`resolve_device`, the rule of every estimator's ``device``
parameter, turning it into the :class:`torch.device` the kernels take.
"""

from ._device import resolve_device
from ._msm import (
    ALGORITHMS,
    PRECISIONS,
    Plan,
    default_memory_budget,
    interval_average,
    interval_bounds,
    max_similarity_table,
)
from ._msm_batch import score_batch
from ._msm_fused import tuned_kernel
from ._pointcloud_kernels import (
    farthest_point_sampling,
    fpfh,
    ipg_groups,
    largest_cluster,
    remove_plane,
    unit_sphere,
)

__all__ = [
    "ALGORITHMS",
    "PRECISIONS",
    "Plan",
    "default_memory_budget",
    "farthest_point_sampling",
    "fpfh",
    "interval_average",
    "interval_bounds",
    "ipg_groups",
    "largest_cluster",
    "max_similarity_table",
    "remove_plane",
    "resolve_device",
    "score_batch",
    "tuned_kernel",
    "unit_sphere",
]
