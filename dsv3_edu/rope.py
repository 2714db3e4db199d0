"""Rotary position embedding (RoPE) with DeepSeek-V3's YaRN context extension.

RoPE rotates each pair of dimensions of a query or key by an angle ``m * theta_i``
that grows with the position m, so a query at m and a key at n score
``q . R_{n-m} k``: only the offset n - m matters. Frequencies
``theta_i = base^(-2i/R)`` run from fast (i = 0) to slow.

Pairs: DeepSeek's checkpoints pair neighbours, (x0, x1), (x2, x3), ... (the official
code views the vector as R/2 complex numbers). Llama-style "half-split" RoPE pairs
(x_i, x_{i+R/2}). The two agree once the weight rows that produce x are permuted
(``deinterleave``); the checkpoints were trained with interleaved pairs (trap 10).

YaRN ([V3] 4.3; Peng et al. 2023) stretches a model trained on
``original_max_position_embeddings`` positions by ``factor``: frequencies that turn
fewer than ``beta_slow`` times over the original context are divided by ``factor``
(interpolated), those that turn more than ``beta_fast`` times are kept (extrapolated),
with a linear ramp between. cos/sin are multiplied by
``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` and the softmax scale by
``mscale(factor, mscale_all_dim)^2``, with ``mscale(s, m) = 0.1 m ln s + 1``.

Shapes: T positions, R = qk_rope_head_dim; cos and sin are (T, R/2), one angle per pair.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 when not stretched)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(
    beta_fast: float, beta_slow: float, dim: int, base: float, original_max: int
) -> tuple[int, int]:
    """Pair indices (low, high) between which YaRN ramps from keeping to interpolating.

    Pair i turns ``original_max / (2 pi base^(2i/dim))`` times over the original context;
    solving for the i that turns ``beta`` times gives the bounds (floored/ceiled as
    [OFF] and transformers do).
    """

    def pair_for(rotations: float) -> float:
        return dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(pair_for(beta_fast)), math.ceil(pair_for(beta_slow))
    return max(low, 0), min(high, dim - 1)


def linear_ramp(low: float, high: float, n: int) -> torch.Tensor:
    """(n,) values clamp((i - low) / (high - low), 0, 1) for i = 0..n-1."""
    if low == high:
        high += 0.001  # avoid dividing by zero, as the reference code does
    return ((torch.arange(n, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)


def yarn_ramp(config: ModelConfig) -> torch.Tensor:
    """(R/2,) how much each frequency is interpolated: 0 = kept as is, 1 = divided by factor."""
    dim = config.qk_rope_head_dim
    if config.rope_scaling is None:
        return torch.zeros(dim // 2)
    s = config.rope_scaling
    low, high = yarn_correction_range(
        s["beta_fast"], s["beta_slow"], dim, config.rope_theta, s["original_max_position_embeddings"]
    )
    return linear_ramp(low, high, dim // 2)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """(R/2,) angular frequency of each pair, ``base^(-2i/R)``, blended by YaRN when it is on."""
    dim = config.qk_rope_head_dim
    base_pow = config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # base^(2i/R) = 1/theta_i
    if config.rope_scaling is None:
        return 1.0 / base_pow
    keep = 1 - yarn_ramp(config)  # 1: the trained frequency, 0: divided by factor
    # Written in transformers' order of float operations, so the two agree bit for bit.
    return 1.0 / (config.rope_scaling["factor"] * base_pow) * (1 - keep) + 1.0 / base_pow * keep


def rope_attention_factor(config: ModelConfig) -> float:
    """The factor YaRN multiplies cos and sin by: mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    if config.rope_scaling is None:
        return 1.0
    s = config.rope_scaling
    return yarn_get_mscale(s["factor"], s["mscale"]) / yarn_get_mscale(s["factor"], s["mscale_all_dim"])


def softmax_scale(config: ModelConfig) -> float:
    """1/sqrt(d_h + d_h^R), times mscale(factor, mscale_all_dim)^2 under YaRN. Both MLA paths use it (trap 7)."""
    scale = config.qk_head_dim**-0.5
    if config.rope_scaling is not None:
        s = config.rope_scaling
        scale *= yarn_get_mscale(s["factor"], s["mscale_all_dim"]) ** 2
    return scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True) -> torch.Tensor:
    """Rotate x (..., T, R) by the angles in cos, sin (T, R/2).

    interleaved=True rotates pairs (x0, x1), (x2, x3), ... and keeps that layout, as
    [OFF]'s complex multiply does; interleaved=False rotates (x_i, x_{i+R/2}).
    The rotation is computed in fp32 and cast back to x's dtype.
    """
    dtype = x.dtype
    x = x.float()
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, R/2) each
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)  # (..., T, R)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(dtype)


def deinterleave(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Reorder (x0, x1, x2, x3, ...) to (x0, x2, ..., x1, x3, ...) along dim.

    Applied to the rope rows of q_b_proj and kv_a_proj_with_mqa, it turns interleaved
    weights into weights for half-split RoPE (what older transformers releases did on load).
    """
    n = x.shape[dim]
    index = torch.cat((torch.arange(0, n, 2), torch.arange(1, n, 2))).to(x.device)
    return x.index_select(dim, index)


class RotaryEmbedding(nn.Module):
    """cos and sin for given positions (no learned weights, nothing in the state_dict)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.max_position_embeddings = config.max_position_embeddings
        self.attention_factor = rope_attention_factor(config)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) integers -> cos, sin (T, R/2) in fp32."""
        if positions.numel() and int(positions.max()) >= self.max_position_embeddings:
            raise ValueError(
                f"position {int(positions.max())} is beyond max_position_embeddings={self.max_position_embeddings}: "
                "shorten the input (or crop the cache), or build the model with a larger max_position_embeddings"
            )
        angles = positions.float()[..., None] * self.inv_freq  # (T, R/2)
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor
