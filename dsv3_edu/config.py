"""The model configuration: one dataclass named like the released ``config.json``.

Every field keeps the Hugging Face key name of DeepSeek-V3's ``config.json`` and
carries its paper symbol ([V2] arXiv 2405.04434, [V3] arXiv 2412.19437) in a
comment. ``ModelConfig.deepseek_v3()`` is the released configuration, exactly;
``ModelConfig.tiny()`` is small enough for every lesson to run in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
RELEASED_CONFIG_PATH = DATA_DIR / "deepseek_v3_config.json"

# Keys of a config.json that do not change what the model computes (metadata,
# training-only or serving-only settings). from_hf ignores them with a warning.
_IGNORED_KEYS = (
    "architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "pretraining_tp", "ep_size",
    "aux_loss_alpha", "seq_aux", "quantization_config", "attention_dropout", "num_key_value_heads",
    "output_router_logits", "router_aux_loss_coef", "head_dim", "rope_interleave_qk",
)

# Keys whose value we check but do not store: the course implements exactly one choice.
_FIXED_VALUES = {
    "scoring_func": ("sigmoid", "DeepSeek-V3 routes with sigmoid affinities; softmax routing is DeepSeek-V2's"),
    "topk_method": ("noaux_tc", "DeepSeek-V3 selects experts with the bias-corrected group-limited top-k"),
    "hidden_act": ("silu", "the experts and the dense FFN are SwiGLU"),
    "moe_layer_freq": (1, "every layer after first_k_dense_replace is an MoE layer"),
    "tie_word_embeddings": (False, "DeepSeek-V3 has separate embedding and output head matrices"),
    "attention_bias": (False, "the attention projections have no bias"),
}

_YARN_KEYS = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "original_max_position_embeddings")


@dataclass
class ModelConfig:
    """DeepSeek-V3's hyper-parameters, with the released ``config.json`` key names."""

    vocab_size: int = 129280  # |V|
    hidden_size: int = 7168  # d
    num_hidden_layers: int = 61  # l (main model; the MTP modules come on top)
    # Multi-head Latent Attention ([V2] eqs 9-19)
    num_attention_heads: int = 128  # n_h
    q_lora_rank: int | None = 1536  # d_c' (None: plain query projection W^Q, no query latent)
    kv_lora_rank: int = 512  # d_c
    qk_nope_head_dim: int = 128  # d_h (the part of q and k without RoPE)
    qk_rope_head_dim: int = 64  # d_h^R (decoupled RoPE part)
    v_head_dim: int = 128  # d_h (value head)
    # Feed-forward: dense first layers, then DeepSeekMoE ([V3] eqs 12-16)
    intermediate_size: int = 18432  # hidden size of the dense SwiGLU FFN
    first_k_dense_replace: int = 3  # how many first layers are dense
    moe_intermediate_size: int = 2048  # hidden size of one expert
    n_routed_experts: int = 256  # N_r
    n_shared_experts: int = 1  # N_s
    num_experts_per_tok: int = 8  # K_r
    n_group: int = 8  # expert groups (nodes in the paper)
    topk_group: int = 4  # M, groups a token may use
    routed_scaling_factor: float = 2.5  # multiplies the normalized gate weights
    norm_topk_prob: bool = True  # normalize the K_r gate weights to sum to 1
    # Multi-Token Prediction ([V3] 2.2)
    num_nextn_predict_layers: int = 1  # D
    # Positions
    max_position_embeddings: int = 163840
    rope_theta: float = 10000.0  # RoPE base
    rope_interleave: bool = True  # rotate pairs (x0, x1), (x2, x3), ... as the checkpoints expect
    rope_scaling: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "yarn",
            "factor": 40,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
        }
    )
    rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm
    initializer_range: float = 0.02  # std of the normal init of the weights
    # Course only (not in config.json): which MLA path to run, on the same weights.
    attn_impl: str = "naive"  # "naive": expand K, V from the latent; "absorbed": attend in latent space

    # ------------------------------------------------------------------ derived
    @property
    def qk_head_dim(self) -> int:
        """d_h + d_h^R: the width of one head's query and key."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_group

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers [0, first_k_dense_replace) are dense, the rest MoE (the MTP block too)."""
        return layer_idx >= self.first_k_dense_replace

    # --------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        def bad(name: str, why: str, fix: str) -> ValueError:
            return ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}. {fix}")

        positive = (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
            "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "n_group",
            "topk_group", "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(name, "must be a positive integer", "Set it to a whole number of at least 1")
        for name in ("n_shared_experts", "num_nextn_predict_layers", "first_k_dense_replace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be a non-negative integer", "Set it to 0 or more")
        if self.q_lora_rank is not None and (
            isinstance(self.q_lora_rank, bool) or not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0
        ):
            raise bad("q_lora_rank", "must be a positive integer or None", "Use None for a plain query projection")
        for name in ("rope_theta", "rms_norm_eps", "routed_scaling_factor", "initializer_range"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive", "Use a value above 0")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "RoPE rotates pairs of dimensions, so it must be even", "Use an even size")
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise bad(
                "first_k_dense_replace",
                f"is more than num_hidden_layers={self.num_hidden_layers}",
                "Use at most num_hidden_layers (that many first layers are dense)",
            )
        if self.n_routed_experts % self.n_group:
            raise bad(
                "n_routed_experts",
                f"is not divisible by n_group={self.n_group}",
                "Make n_routed_experts a multiple of n_group so every group has as many experts",
            )
        if self.topk_group > self.n_group:
            raise bad("topk_group", f"is more than n_group={self.n_group}", "Keep at most n_group groups")
        if self.n_group > 1 and self.experts_per_group < 2:
            raise bad(
                "n_group",
                f"leaves {self.experts_per_group} expert per group, but a group's score is the sum of its top-2",
                "Use fewer groups (at least 2 experts per group), or n_group=1",
            )
        reachable = self.topk_group * self.experts_per_group
        if self.num_experts_per_tok > reachable:
            raise bad(
                "num_experts_per_tok",
                f"is more than the {reachable} experts in the topk_group={self.topk_group} kept groups "
                f"({self.experts_per_group} experts each)",
                "Lower num_experts_per_tok or raise topk_group",
            )
        if self.attn_impl not in ("naive", "absorbed"):
            raise bad("attn_impl", "is not a known attention path", 'Use "naive" or "absorbed"')
        if self.rope_scaling is not None:
            self.rope_scaling = _normalize_rope_scaling(self.rope_scaling)

    # ------------------------------------------------------------------ presets
    @classmethod
    def deepseek_v3(cls, **overrides: Any) -> ModelConfig:
        """The released DeepSeek-V3 configuration: data/deepseek_v3_config.json, less `auto_map` (data/README.md)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """Every mechanism of DeepSeek-V3 at a size that runs in milliseconds on a CPU."""
        small = dict(
            vocab_size=260,  # dsv3_edu's byte tokenizer: 256 bytes + 4 special tokens
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            q_lora_rank=32,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            intermediate_size=128,
            first_k_dense_replace=1,
            moe_intermediate_size=32,
            n_routed_experts=8,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=4,
            topk_group=2,
            num_nextn_predict_layers=1,
            max_position_embeddings=512,
            rope_scaling=None,
        )
        small.update(overrides)
        return cls(**small)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------- Hugging Face format
    @classmethod
    def from_hf(cls, path_or_dict: str | Path | dict[str, Any], **overrides: Any) -> ModelConfig:
        """Read a Hugging Face ``config.json`` (a path, a directory holding one, or a dict).

        Understands the released layout (top-level ``rope_theta``, ``rope_scaling`` with
        ``"type": "yarn"``) and the one current transformers releases write
        (``rope_parameters`` with ``rope_type``). Keys that do not change the model are
        ignored with one warning; values the course cannot honour raise ``ValueError``.
        """
        if isinstance(path_or_dict, dict):
            raw = copy.deepcopy(path_or_dict)
        else:
            path = Path(path_or_dict)
            if path.is_dir():
                path = path / "config.json"
            if not path.exists():
                raise FileNotFoundError(f"No config.json at {path}: pass the file or the checkpoint folder")
            raw = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)} - {"attn_impl"}
        kwargs: dict[str, Any] = {}
        ignored = []

        rope_parameters = raw.pop("rope_parameters", None)
        if rope_parameters is not None:
            rope_parameters = dict(rope_parameters)
            if "rope_theta" in rope_parameters:
                kwargs["rope_theta"] = rope_parameters.pop("rope_theta")
            kind = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
            kwargs["rope_scaling"] = None if kind == "default" else rope_parameters
            # The older layout may sit beside the new one; the new one wins.
            raw.pop("rope_scaling", None)

        model_type = raw.pop("model_type", "deepseek_v3")
        if model_type != "deepseek_v3":
            raise ValueError(
                f"config.json has model_type={model_type!r}: dsv3_edu builds DeepSeek-V3 only "
                '(model_type "deepseek_v3"). DeepSeek-V2 routes with softmax and max group scores.'
            )
        raw.pop("architectures", None)
        heads = raw.get("num_attention_heads", cls.num_attention_heads)
        # Derived keys transformers writes: silent when they agree with the rest.
        if raw.get("num_key_value_heads") == heads:
            raw.pop("num_key_value_heads")
        if raw.get("qk_head_dim") == raw.get("qk_nope_head_dim", 128) + raw.get("qk_rope_head_dim", 64):
            raw.pop("qk_head_dim")
        for key, value in raw.items():
            if key in _FIXED_VALUES:
                want, why = _FIXED_VALUES[key]
                if value != want:
                    raise ValueError(
                        f"config.json has {key}={value!r}, which dsv3_edu cannot honour: {why}. "
                        f"Only {key}={want!r} is supported."
                    )
            elif key in names:
                kwargs.setdefault(key, value)
            else:  # metadata, training-only and serving-only keys (_IGNORED_KEYS) and anything unknown
                ignored.append(key)
        if ignored:
            warnings.warn(
                "ModelConfig.from_hf ignores keys that do not change the model: " + ", ".join(sorted(ignored)),
                stacklevel=2,
            )
        if "rope_theta" in kwargs:
            kwargs["rope_theta"] = float(kwargs["rope_theta"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self, rope_layout: str = "released") -> dict[str, Any]:
        """The ``config.json`` dict. ``rope_layout``: "released" (``rope_scaling``) or
        "transformers" (``rope_parameters``, as current transformers releases write)."""
        out: dict[str, Any] = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3"}
        for f in dataclasses.fields(self):
            if f.name != "attn_impl":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["num_key_value_heads"] = self.num_attention_heads
        for key, (value, _) in _FIXED_VALUES.items():
            out[key] = value
        if rope_layout == "transformers":
            scaling = out.pop("rope_scaling")
            params: dict[str, Any] = {"rope_type": "default", "rope_theta": out.pop("rope_theta")}
            if scaling is not None:
                params.update({k: v for k, v in scaling.items() if k != "type"}, rope_type=scaling["type"])
            out["rope_parameters"] = params
        elif rope_layout != "released":
            raise ValueError(f'rope_layout={rope_layout!r}: use "released" or "transformers"')
        return dict(sorted(out.items()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf(), indent=2) + "\n")


def _normalize_rope_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    """Bring either rope layout to the released one: ``{"type": "yarn", factor, beta_fast, ...}``."""
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None)
    scaling.pop("type", None)
    if kind != "yarn":
        raise ValueError(
            f"ModelConfig.rope_scaling has type {kind!r}: only YaRN (as DeepSeek-V3 uses it) is supported. "
            'Use rope_scaling=None for plain RoPE or {"type": "yarn", ...}.'
        )
    # transformers may add these; they are either derived or fixed for DeepSeek-V3.
    for derived in ("rope_theta", "attention_factor", "truncate"):
        scaling.pop(derived, None)
    defaults = {"factor": 1.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.0}
    unknown = sorted(set(scaling) - set(_YARN_KEYS))
    if unknown:
        raise ValueError(f"ModelConfig.rope_scaling has unknown YaRN keys {unknown}; known: {list(_YARN_KEYS)}")
    if "original_max_position_embeddings" not in scaling:
        raise ValueError(
            "ModelConfig.rope_scaling needs original_max_position_embeddings (the context RoPE was trained "
            "for before YaRN stretched it; 4096 for DeepSeek-V3)"
        )
    out = {"type": "yarn", **defaults, **scaling}
    if not out["factor"] >= 1:
        raise ValueError(f"ModelConfig.rope_scaling factor={out['factor']!r}: YaRN stretches, so use a factor >= 1")
    if not out["beta_fast"] > out["beta_slow"] > 0:
        raise ValueError(
            f"ModelConfig.rope_scaling beta_fast={out['beta_fast']!r}, beta_slow={out['beta_slow']!r}: "
            "need beta_fast > beta_slow > 0"
        )
    return {"type": "yarn", **{k: out[k] for k in _YARN_KEYS}}
