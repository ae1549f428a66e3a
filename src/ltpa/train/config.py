"""The training configuration lives in :mod:`ltpa.runs.config`; this name stays for imports
(``from ltpa.train.config import TrainConfig``), which keep working unchanged."""
from ltpa.runs.config import (  # noqa: F401
    MAX_CPU_THREADS,
    PRECISIONS,
    RESIZE_MODES,
    RESUMABLE_CHANGES,
    TEST_WEIGHTS,
    TrainConfig,
    apply_overrides,
    resume_config,
)

__all__ = ["TrainConfig", "apply_overrides", "resume_config", "RESUMABLE_CHANGES"]
