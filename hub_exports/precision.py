"""Full fp32 arithmetic for numbers that must not depend on how training set up the process: export fingerprints,
and evaluation scores compared with a CPU run."""

from contextlib import contextmanager

import torch


@contextmanager
def full_fp32_matmuls():
    """Training may enable TF32 (10-bit mantissa matmuls), which moves logits by ~1e-2; fingerprints need fp32.

    torch >= 2.9 has a new per-backend switch and refuses to read the legacy flag once the new one was used (as
    Trainer does for `tf32=True`), so the new switch is used where it exists."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
    else:
        saved = matmul.allow_tf32
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = saved
        else:
            matmul.allow_tf32 = saved
