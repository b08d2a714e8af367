"""webdino-seg: semantic segmentation on frozen (or fine-tuned) Web-DINO / DINOv2 backbones."""

from .backbone import DinoVisionTransformer
from .factory import create_backbone, create_model
from .heads import SimpleDecoder
from .model import SegmentationModel
from .variants import VARIANTS, BackboneConfig, get_variant
from .weights import WeightsError, convert_weights, load_backbone_weights

__all__ = [
    "VARIANTS",
    "BackboneConfig",
    "DinoVisionTransformer",
    "SegmentationModel",
    "SimpleDecoder",
    "WeightsError",
    "convert_weights",
    "create_backbone",
    "create_model",
    "get_variant",
    "load_backbone_weights",
]

__version__ = "0.1.0"
