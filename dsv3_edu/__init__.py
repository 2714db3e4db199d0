"""dsv3-edu: DeepSeek-V3 built step by step (the package behind the notebooks)."""

from .accounting import kv_cache_bytes_per_token
from .config import ModelConfig

__all__ = ["ModelConfig", "kv_cache_bytes_per_token"]
__version__ = "0.1.0"
