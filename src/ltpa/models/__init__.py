"""ltpa models: import this package to register every model."""
from ._registry import create_model, is_model, list_models, register_model
from .output import AttentionOutput, LevelInfo
from . import vgg_att as _vgg_att  # noqa: F401  (registers vgg_att1/2/3, vgg_noatt)
from . import baselines as _baselines  # noqa: F401  (registers vgg, vgg_gap)
from .baselines import VGG, VGGGAP
from .vgg_att import VGGAttention

__all__ = [
    "AttentionOutput", "LevelInfo", "VGG", "VGGGAP", "VGGAttention",
    "create_model", "is_model", "list_models", "register_model",
]
