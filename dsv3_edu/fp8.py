"""FP8 block quantization as DeepSeek-V3's release stores it, and the bytes of the weights in each format.

Every projection weight of attention, dense FFN and experts is ``float8_e4m3fn`` with one float32
``weight_scale_inv`` per 128 x 128 block, and ``weight ~= fp8_weight * weight_scale_inv`` block by block
(README_WEIGHTS.md; [V3] section 3.3.2). Embedding, head, router, norms and ``eh_proj`` stay BF16;
``e_score_correction_bias`` is float32. Used by lesson 10 and its widget.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .model import DecoderLayer, MTPModule

FP8_BLOCK = 128  # weight_block_size [128, 128] in config.json's quantization_config
FP8_MAX = 448.0  # largest finite float8_e4m3fn
WEIGHT_FORMATS = ("fp8", "bf16", "fp32")


def fp8_block_quantize(weight: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) -> (fp8 weight (out, in), weight_scale_inv (ceil(out/block), ceil(in/block)) float32).

    Per block: weight_scale_inv = max|w| / 448, fp8 = w / weight_scale_inv rounded to e4m3. Edge blocks are
    partial; the release pads them with zeros, which leaves their max unchanged. An all-zero block gets 1.
    """
    if weight.dim() != 2:
        raise ValueError(f"fp8_block_quantize takes a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    R, C = -(-rows // block), -(-cols // block)  # blocks per dimension, rounded up
    padded = weight.new_zeros(R * block, C * block, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(R, block, C, block)  # (R, block, C, block)
    amax = blocks.abs().amax(dim=(1, 3))  # (R, C)
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn)
    return q.view(R * block, C * block)[:rows, :cols].contiguous(), scale_inv


def fp8_block_dequantize(
    q: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """fp8 (out, in) and weight_scale_inv (ceil(out/block), ceil(in/block)) -> weight in ``dtype``:
    each 128 x 128 block times its scale (what the official ``weight_dequant`` computes)."""
    rows, cols = q.shape
    want = (-(-rows // block), -(-cols // block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"weight_scale_inv has shape {tuple(scale_inv.shape)}; a {rows} x {cols} weight in "
                         f"{block} x {block} blocks needs {want}")
    scale = scale_inv.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return (q.float() * scale).to(dtype)


# The projections stored in FP8, each with a weight_scale_inv (the official code's FP8 ``Linear`` layers).
FP8_PROJECTIONS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
                   "gate_proj", "up_proj", "down_proj")


def release_dtype(name: str) -> str:
    """The dtype a tensor has in the FP8 release, from its checkpoint name."""
    parts = name.split(".")
    if parts[-1] == "weight" and len(parts) > 1 and parts[-2] in FP8_PROJECTIONS:
        return "float8_e4m3fn"  # attention, dense FFN and expert projections (+ a weight_scale_inv)
    if name.endswith("e_score_correction_bias"):
        return "float32"
    return "bfloat16"  # embedding, lm_head, router gate.weight, norms, eh_proj


_BYTES = {"float8_e4m3fn": 1, "bfloat16": 2, "float32": 4}


def release_tensors(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor the FP8 release stores for these tensors: each FP8 weight is
    followed by its ``weight_scale_inv`` (float32, one value per 128 x 128 block)."""
    out = []
    for name, shape in shapes.items():
        dtype = release_dtype(name)
        out.append((name, tuple(shape), dtype))
        if dtype == "float8_e4m3fn":
            scale = tuple(-(-s // FP8_BLOCK) for s in shape)
            out.append((name[: -len("weight")] + "weight_scale_inv", scale, "float32"))
    return out


def layer_shapes(config: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Tensor shapes of one layer of each kind ("dense", "moe", "mtp"), named relative to the layer,
    read from modules built on the meta device (no memory, whatever the size)."""
    kinds = {}
    with torch.device("meta"):
        if config.first_k_dense_replace > 0:
            kinds["dense"] = DecoderLayer(config, 0)
        if config.num_hidden_layers > config.first_k_dense_replace:
            kinds["moe"] = DecoderLayer(config, config.num_hidden_layers - 1)
        if config.num_nextn_predict_layers:
            kinds["mtp"] = MTPModule(config, config.num_hidden_layers)
    return {
        kind: {name: tuple(t.shape) for name, t in module.state_dict().items() if "rotary_emb" not in name
               and "tokens_per_expert" not in name}
        for kind, module in kinds.items()
    }


_WEIGHT_BYTES_CACHE: dict[tuple[str, str, bool], int] = {}


def weight_bytes(config: ModelConfig | None = None, weights: str = "fp8", include_mtp: bool = False) -> int:
    """Bytes of the main model's weights (``include_mtp``: plus the MTP modules' own tensors).

    "fp8": the release's layout (FP8 projections with float32 block scales, BF16 for the rest);
    "bf16" / "fp32": every tensor at 2 / 4 bytes, except e_score_correction_bias (float32 everywhere).
    """
    config = config or ModelConfig.deepseek_v3()
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    key = (repr(config), weights, include_mtp)
    if key in _WEIGHT_BYTES_CACHE:
        return _WEIGHT_BYTES_CACHE[key]

    def nbytes(shapes: dict[str, tuple[int, ...]]) -> int:
        if weights == "fp8":
            return sum(math.prod(s) * _BYTES[dt] for _, s, dt in release_tensors(shapes))
        per = 2 if weights == "bf16" else 4
        return sum(math.prod(s) * (4 if n.endswith("e_score_correction_bias") else per) for n, s in shapes.items())

    d, V = config.hidden_size, config.vocab_size
    kinds = layer_shapes(config)
    n_dense = config.first_k_dense_replace
    total = nbytes({"model.embed_tokens.weight": (V, d), "lm_head.weight": (V, d), "model.norm.weight": (d,)})
    total += n_dense * nbytes(kinds.get("dense", {}))
    total += (config.num_hidden_layers - n_dense) * nbytes(kinds.get("moe", {}))
    if include_mtp:
        total += config.num_nextn_predict_layers * nbytes(kinds.get("mtp", {}))
    _WEIGHT_BYTES_CACHE[key] = total
    return total


