"""dsv3-edu: DeepSeek-V3 built step by step (the package behind the notebooks).

Layers, each importing only the ones above it:

1. core model: config, rope, layers (RMSNorm, eval_mode), attention, mla, moe, balance, model, and the
   formulas the lessons check against: accounting, costmodel (attention FLOPs/bytes/roofline), fp8;
2. training and inference: data, checkpoint, train, evaluation, generate;
3. the lessons: viz (shared plotting and formatting), widgets/lNN_<slug>.py and exercises/lNN_<slug>.py,
   paired with notebooks/NN_*.ipynb;
4. benchmarks and experiments: bench/, experiments/.

The rule: widgets/ and exercises/ import the core and viz, and define no formula that a notebook or a
test checks against.
"""

from .accounting import count_parameters, kv_cache_bytes_per_token
from .checkpoint import load_pretrained
from .config import ModelConfig
from .generate import generate, speculative_generate
from .layers import eval_mode
from .model import DeepSeekV3

__all__ = ["ModelConfig", "count_parameters", "kv_cache_bytes_per_token"]
__all__ += ["DeepSeekV3", "eval_mode", "generate", "load_pretrained", "speculative_generate"]
__version__ = "0.1.0"
