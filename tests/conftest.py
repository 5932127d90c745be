"""Test session settings.

Torch runs single-threaded in tests unless ``QM_TEST_THREADS`` says otherwise: the tests use
small tensors, and on a shared 2-core machine OpenMP threads spinning against other processes
made a 40-step training test 100x slower (25 s instead of 0.3 s).
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("QM_TEST_THREADS", "1")))
