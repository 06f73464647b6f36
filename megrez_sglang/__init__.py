"""megrez_sglang: Infinigence's Megrez2-3x7B-A3B on current SGLang.

Importing the package first configures SGLang for this host (its CPU engine where there is no
CUDA; see serving/cpu_runtime.py) and registers the Megrez2 config and reference model with transformers.
"""

from .serving.cpu_runtime import configure_sglang_for_host

DEVICE = configure_sglang_for_host()

from .model.auto_classes import register_with_transformers  # noqa: E402
from .model.config import MegrezMoeConfig  # noqa: E402

register_with_transformers()

__all__ = ["DEVICE", "MegrezMoeConfig"]
