"""Suite-wide settings.

Tests use one intra-op thread: the tensors are tiny, and on a busy 2-core machine two OpenMP
threads per process can make a step 30-100x slower. Set LTPA_TEST_THREADS to override.
"""
import os

import torch

torch.set_num_threads(int(os.environ.get("LTPA_TEST_THREADS", "1")))
