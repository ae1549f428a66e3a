"""ltpa: Learn to Pay Attention (Jetley et al., ICLR 2018) in PyTorch."""
from .models import AttentionOutput, LevelInfo, create_model, list_models

__version__ = "0.1.0"

__all__ = ["AttentionOutput", "LevelInfo", "create_model", "list_models", "__version__"]
