"""LAION's CLIP_benchmark as the reference for mmtrain's CLIP metrics (the clip-benchmark package,
tests/references.txt), made to run beside numpy 2.4.

clip-benchmark 1.6.2's accuracy() calls float() on a one-element array, which numpy 2.4 refuses
(numpy 1.x allowed it). Its code runs unchanged; the `float` it looks up in its module gets the
numpy 1.x behaviour back, and nothing else."""

import builtins

import numpy as np
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

zeroshot_classification.float = lambda value: builtins.float(np.asarray(value).reshape(()).item())

__all__ = ["zeroshot_classification", "zeroshot_retrieval"]
