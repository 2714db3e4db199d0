"""The model configuration: one dataclass named like the released ``config.json``.

Every field keeps the Hugging Face key name of DeepSeek-V3's ``config.json`` and
carries its paper symbol ([V2] arXiv 2405.04434, [V3] arXiv 2412.19437) in a
comment. ``ModelConfig.deepseek_v3()`` is the released configuration, exactly;
``ModelConfig.tiny()`` is small enough for every lesson to run in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
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
    # what every transformers PretrainedConfig writes
    "_name_or_path", "chunk_size_feed_forward", "id2label", "label2id", "is_encoder_decoder", "output_attentions",
    "output_hidden_states", "problem_type", "return_dict",
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

# Keys that fix the shape or number of the weight tensors: from_hf needs them in config.json (the defaults
# are the 671B model's, so filling a missing one silently would build a model the weights cannot fit).
SHAPE_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "first_k_dense_replace",
    "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
)

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

        for name in _INTEGER_FIELDS + ("q_lora_rank",):
            value = getattr(self, name)
            if value is None and name == "q_lora_rank":
                continue
            if isinstance(value, str):
                raise bad(name, "must be a whole number, not a string", f"Write {value} without quotes")
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "must be a whole number", "Set it to an integer such as 64")
        for name in _INTEGER_FIELDS:
            value = getattr(self, name)
            if name in ("n_shared_experts", "num_nextn_predict_layers", "first_k_dense_replace"):
                if value < 0:
                    raise bad(name, "must be a non-negative integer", "Set it to 0 or more")
            elif value <= 0:
                raise bad(name, "must be a positive integer", "Set it to a whole number of at least 1")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise bad("q_lora_rank", "must be a positive integer or None", "Use None for a plain query projection")
        for name in ("rope_theta", "rms_norm_eps", "routed_scaling_factor", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise bad(name, "must be a number, not a string", f"Write {value} without quotes")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, f"must be a number, not {type(value).__name__}", "Use a float such as 1.0")
            if not math.isfinite(value) or value <= 0:
                raise bad(name, "must be a finite number above 0", "Use a positive value")
        for name in ("norm_topk_prob", "rope_interleave"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                kind = "a string" if isinstance(value, str) else f"a {type(value).__name__}"
                raise bad(name, f"must be true or false, not {kind} (a non-empty string would count as true)",
                          "Write true/false without quotes in config.json, True/False in Python")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise bad("rope_scaling", "must be a dict or None", 'Use None for plain RoPE or {"type": "yarn", ...}')
        if not isinstance(self.attn_impl, str):
            raise bad("attn_impl", "is not a known attention path", 'Use "naive" or "absorbed"')
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
        _check_names(overrides, "ModelConfig.deepseek_v3")
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
        _check_names(overrides, "ModelConfig.tiny")
        small.update(overrides)
        return cls(**small)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        _check_names(changes, "ModelConfig.replace")
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
        _check_names(overrides, "ModelConfig.from_hf overrides")
        source = "the config dict"
        if isinstance(path_or_dict, dict):
            raw = copy.deepcopy(path_or_dict)
        else:
            path = Path(path_or_dict)
            if path.is_dir():
                path = path / "config.json"
            if not path.exists():
                raise FileNotFoundError(f"No config.json at {path}: pass the file or the checkpoint folder")
            raw = read_config_json(path)
            source = str(path)
        names = {f.name for f in dataclasses.fields(cls)} - {"attn_impl"}
        kwargs: dict[str, Any] = {}
        ignored, unknown = [], []

        rope_parameters = raw.pop("rope_parameters", None)
        if rope_parameters is not None:
            if not isinstance(rope_parameters, dict):
                raise ValueError(f"{source}: rope_parameters={rope_parameters!r} must be a dict (with rope_theta)")
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
            elif key in _IGNORED_KEYS:  # metadata, training-only and serving-only keys
                ignored.append(key)
            else:
                unknown.append(key)
        missing = [key for key in SHAPE_KEYS if key not in kwargs and key not in overrides]
        if missing:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" for k in unknown
                     if (close := difflib.get_close_matches(k, missing, n=1, cutoff=0.75))]
            raise ValueError(
                f"{source} lacks {', '.join(missing)}: these keys fix the weights' shapes, and the defaults are the "
                "671B model's, so they must be given" + (f". It has {', '.join(hints)}" if hints else "")
                + ". Add them to config.json (or pass them as overrides)."
            )
        if unknown:
            known = sorted(names | set(_FIXED_VALUES) | set(_IGNORED_KEYS) | {"rope_parameters", "model_type"})
            warnings.warn(
                "ModelConfig.from_hf does not know these keys (typos?), so they change nothing: "
                + ", ".join(with_suggestion(k, known) for k in sorted(unknown)),
                stacklevel=2,
            )
        if ignored:
            warnings.warn(
                "ModelConfig.from_hf ignores keys that do not change the model: " + ", ".join(sorted(ignored)),
                stacklevel=2,
            )
        theta = kwargs.get("rope_theta")
        if isinstance(theta, int) and not isinstance(theta, bool):
            kwargs["rope_theta"] = float(theta)
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
        from .files import write_json

        write_json(path, self.to_hf())


_INTEGER_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "first_k_dense_replace",
    "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group",
    "topk_group", "num_nextn_predict_layers", "max_position_embeddings",
)
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ModelConfig))


def with_suggestion(name: str, known) -> str:
    """``name``, followed by the closest of ``known`` when one is close: for "no such field" errors."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"{name} (did you mean {close[0]}?)" if close else name


def _check_names(changes: dict[str, Any], where: str) -> None:
    """Unknown field names in keyword arguments: one ValueError naming each, with the closest field."""
    unknown = [name for name in changes if name not in FIELD_NAMES]
    if unknown:
        raise ValueError(
            f"{where}: no field " + ", ".join(with_suggestion(n, FIELD_NAMES) for n in unknown)
            + ". The fields are ModelConfig's (config.json key names), e.g. hidden_size, num_hidden_layers."
        )


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A config.json as a dict, with an error naming the file when it is not JSON or not an object."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}): the file is damaged or not a config.json. "
            "Restore it from the checkpoint's source (or write it again with ModelConfig.save)."
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}, not an object of config keys")
    return raw


# dtype names a user writes -> torch dtype name. Float dtypes only: a model's weights are floats.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
}


def resolve_dtype(dtype: Any):
    """A ``torch.dtype`` from a torch dtype or a name ("float16", "fp16", "bf16", "torch.bfloat16", ...).

    Only floating-point dtypes (weights are floats); anything else raises ``ValueError`` listing the valid names.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point and dtype.itemsize >= 2:
            return dtype
        name = str(dtype)
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in DTYPE_NAMES:
            return getattr(torch, DTYPE_NAMES[key])
        name = repr(dtype)
    else:
        name = repr(dtype)
    raise ValueError(
        f"dtype={name} is not a floating-point dtype for weights: use one of "
        f"{', '.join(sorted(set(DTYPE_NAMES.values())))} (as torch.float16 or a name: {', '.join(DTYPE_NAMES)})"
    )


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
    for key in _YARN_KEYS:
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"ModelConfig.rope_scaling {key}={value!r}: must be a finite number (no quotes)")
    if not out["factor"] >= 1:
        raise ValueError(f"ModelConfig.rope_scaling factor={out['factor']!r}: YaRN stretches, so use a factor >= 1")
    if not out["beta_fast"] > out["beta_slow"] > 0:
        raise ValueError(
            f"ModelConfig.rope_scaling beta_fast={out['beta_fast']!r}, beta_slow={out['beta_slow']!r}: "
            "need beta_fast > beta_slow > 0"
        )
    return {"type": "yarn", **{k: out[k] for k in _YARN_KEYS}}
