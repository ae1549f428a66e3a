"""ltpa models: import this package to register every model."""
from ._registry import create_model, is_model, list_models, model_summary, register_model
from .output import AttentionOutput, LevelInfo
from . import vgg_att as _vgg_att  # noqa: F401  (registers vgg_att1/2/3, vgg_noatt)
from . import baselines as _baselines  # noqa: F401  (registers vgg, vgg_gap)
from . import resnet_att as _resnet_att  # noqa: F401  (registers rn_att2, rn_att3, preact_resnet)
from . import backbone as _backbone  # noqa: F401  (registers timm_att; timm is imported lazily)
from .backbone import TimmAttention
from .resnet_att import PreActResNet, RNAttention
from .baselines import VGG, VGGGAP
from .vgg_att import VGGAttention

__all__ = [
    "AttentionOutput", "LevelInfo", "PreActResNet", "RNAttention", "TimmAttention", "VGG", "VGGGAP",
    "VGGAttention",
    "create_model", "is_model", "list_models", "model_summary", "register_model",
]
