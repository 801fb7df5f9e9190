"""sklearn-musc: zero-shot industrial anomaly detection (MuSc) as scikit-learn estimators.

A batch of unlabeled images of one product is turned into ViT patch tokens
(:class:`ViTPatchTransformer`), aggregated over local neighbourhoods
(:class:`LNAMDTransformer`), scored by the other images of the batch
(:class:`MutualScoringDetector`) and the image scores refined with image-level
neighbours (:class:`RsCINRescorer`). :func:`~sklearn_musc.presets.make_musc_pipeline`
builds the four steps with a named preset's settings (the paper's, per dataset).
"""

from ._batch import FeatureSets, ImageScores, MultimodalFeatures, PatchTokens
from .aggregation import LNAMDTransformer
from .conformal import benjamini_hochberg, conformal_pvalues, conformal_threshold
from .features import ViTPatchTransformer
from .fusion import CrossModalDetector
from .geometry import maps_to_original, masks_to_input, masks_to_original
from .images import ImageFiles
from .monitoring import DriftMonitor
from .multimodal import MultimodalTransformer
from .pointcloud import PointCloudPatchTransformer
from .presets import available_presets, make_musc_pipeline
from .rescoring import RsCINRescorer
from .scoring import MutualScoringDetector

__version__ = "0.1.0.dev0"

__all__ = [
    "CrossModalDetector",
    "DriftMonitor",
    "FeatureSets",
    "ImageFiles",
    "ImageScores",
    "LNAMDTransformer",
    "MultimodalFeatures",
    "MultimodalTransformer",
    "MutualScoringDetector",
    "PatchTokens",
    "PointCloudPatchTransformer",
    "RsCINRescorer",
    "ViTPatchTransformer",
    "available_presets",
    "benjamini_hochberg",
    "conformal_pvalues",
    "conformal_threshold",
    "make_musc_pipeline",
    "maps_to_original",
    "masks_to_input",
    "masks_to_original",
]
