"""dsv3-edu: DeepSeek-V3 built step by step (the package behind the notebooks)."""

from .accounting import kv_cache_bytes_per_token
from .checkpoint import load_pretrained
from .config import ModelConfig
from .generate import generate, speculative_generate
from .model import DeepSeekV3

__all__ = ["ModelConfig", "kv_cache_bytes_per_token"]
__all__ += ["DeepSeekV3", "generate", "load_pretrained", "speculative_generate"]
__version__ = "0.1.0"
