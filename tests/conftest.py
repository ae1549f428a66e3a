"""Suite-wide settings.

Tests use one intra-op thread: the tensors are tiny, and on a busy 2-core machine two OpenMP
threads per process can make a step 30-100x slower. Set LTPA_TEST_THREADS to override.
"""
import os

import torch

torch.set_num_threads(int(os.environ.get("LTPA_TEST_THREADS", "1")))


def pytest_report_header(config):
    """Which CPU class the suite runs as (CI runs it natively and with restricted kernels)."""
    from ltpa.train.precision import cpu_bf16_support, cpu_model_name

    support = cpu_bf16_support()
    restricted = f", kernels restricted by {support.restriction}" if support.restriction else ""
    return (f"CPU: {cpu_model_name()}, ATen capability {support.capability}{restricted}; "
            f"precision auto -> {'bf16' if support.native else 'fp32'}")
