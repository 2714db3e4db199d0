"""Multi-head Latent Attention (MLA): [V2] eqs 9-19, the same as [V3] eqs 1-11.

Keys and values of all heads come from one small latent per token, and only that
latent and one rope key are cached ([V3] eq numbers, [V2]'s in brackets):

    c^Q  = RMSNorm(W^DQ h)                   (B, T, C')               eq 6 [12]
    q^C  = W^UQ c^Q,  q^R = RoPE(W^QR c^Q)   (B, H, T, D), (B, H, T, R)  eqs 7-8 [13-14]
    c^KV = RMSNorm(W^DKV h)                  (B, T, C)  cached        eq 1 [9]
    k^R  = RoPE(W^KR h)                      (B, T, R)  cached, one for all heads  eq 3 [15]
    k^C  = W^UK c^KV,  v = W^UV c^KV         (B, H, S, D), (B, H, S, V)  eqs 2, 5 [10-11]
    o_i  = sum_s softmax_s(q_i . k_i,s * scale) v_i,s;  u = W^O [o_1 ... o_H]  eqs 10-11 [18-19]

The RMSNorms on both latents are not in the equations; [V3] 4.2 adds them "like DeepSeek-V2",
and the checkpoints carry their weights (q_a_layernorm, kv_a_layernorm).

Two paths compute the same numbers on the same weights:
- "naive" expands k^C and v from the latent, then runs ordinary attention (best for prefill);
- "absorbed" ([V2] 2.1.2; [OFF] attn_impl="absorb") never builds K or V: q~_i = W^UK_i^T q^C_i,
  score = q~_i . c^KV + q^R_i . k^R, o_i = W^UV_i (sum_s p_s c^KV_s) (best for decoding: it reads only the
  latent cache).

Letters: B batch, T new (query) positions, S cached + new positions, H heads,
C latent d_c, C' query latent d_c', D = qk_nope_head_dim, V = v_head_dim, R = qk_rope_head_dim.
Weights are named as in the released checkpoint (notebooks/REFERENCE.md section 6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .attention import KVCache, LayerCache, causal_mask
from .config import ModelConfig
from .layers import RMSNorm
from .rope import RotaryEmbedding, apply_rope, softmax_scale

ATTN_IMPLS = ("naive", "absorbed")


# ----------------------------------------------------------------------------- caches
class LatentCache(LayerCache):
    """MLA's cache: per layer and token exactly [c^KV; k^R], d_c + d_h^R values (trap 8).

    c_kv (B, S, C) is the normalized latent, k_r (B, S, R) the rotated rope key.
    """

    def update(self, layer_idx: int, c_kv: torch.Tensor, k_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' c_kv (B, T, C) and k_r (B, T, R); return all of them, (B, S, C), (B, S, R)."""
        if c_kv.dim() != 3 or k_r.dim() != 3 or c_kv.shape[:2] != k_r.shape[:2]:
            raise ValueError(
                f"LatentCache stores c_kv (B, T, d_c) and k_r (B, T, d_R) with the same B and T, got "
                f"{tuple(c_kv.shape)} and {tuple(k_r.shape)}; per-head K and V go in an ExpandedKVCache (a KVCache)"
            )
        return self._update(layer_idx, (c_kv, k_r))


# Per-head K (B, H, S, D+R) and V (B, H, S, V), as ordinary multi-head attention caches them: lesson 01's
# KVCache, one class. For comparison only: n_h (d_h + d_h^R + d_h) values per token and layer, 71x MLA's.
ExpandedKVCache = KVCache


# ------------------------------------------------------- the cache-dependent cores
def _softmax(scores: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """softmax over keys of already scaled ``scores``, in fp32, masked keys -inf; ``scores`` is left as it is.

    The callers scale their own fresh product in place (``(q k^T).mul_(scale)``), so one decode step creates
    no extra (B, H, T, S) tensor for the scale (lesson 04 counts the tensors a step creates)."""
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1, dtype=torch.float32).to(dtype)


def expand_kv(
    c_kv: torch.Tensor, k_r: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys [W^UK c^KV; k^R] and values W^UV c^KV from the latent ([V3] eqs 2, 4, 5)."""
    # .contiguous(): w_uk, w_uv are strided views of kv_b_proj; one copy lets einsum run a single large GEMM
    k_nope = torch.einsum("bsc,hdc->bhsd", c_kv, w_uk.contiguous())  # (B, H, S, D)
    v = torch.einsum("bsc,hvc->bhsv", c_kv, w_uv.contiguous())  # (B, H, S, V)
    k_r = k_r[:, None].expand(-1, w_uk.shape[0], -1, -1)  # (B, H, S, R): one rope key shared by all heads
    return torch.cat((k_nope, k_r), dim=-1), v  # (B, H, S, D+R), (B, H, S, V)


def expanded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ordinary attention on per-head q (B, H, T, D+R), k (B, H, S, D+R), v (B, H, S, V) -> o, p."""
    if q.shape[-2] == 1:  # one query (decoding): K q^T, a matrix-vector product along K's rows, is faster on CPUs
        scores = (k @ q.transpose(-1, -2)).transpose(-1, -2)  # (B, H, 1, S)
    else:
        scores = q @ k.transpose(-1, -2)  # (B, H, T, S)
    p = _softmax(scores.mul_(scale), mask, q.dtype)  # scaled in place: scores is this function's own tensor
    return p @ v, p  # (B, H, T, V), (B, H, T, S)


def naive_attention(q_nope, q_r, c_kv, k_r, w_uk, w_uv, scale, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand K and V from the whole latent, then attend ([V3] eqs 2-10 as written)."""
    k, v = expand_kv(c_kv, k_r, w_uk, w_uv)  # (B, H, S, D+R), (B, H, S, V)
    q = torch.cat((q_nope, q_r), dim=-1)  # (B, H, T, D+R)
    return expanded_attention(q, k, v, scale, mask)


def absorbed_attention(q_nope, q_r, c_kv, k_r, w_uk, w_uv, scale, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend in latent space: W^UK folds into the query, W^UV into the output ([V2] 2.1.2).

    q_i^C . (W^UK_i c_s) = (W^UK_i^T q_i^C) . c_s, so the score needs only the cached c_s and k^R_s.
    Same softmax scale as the naive path (trap 7): the dot products are the same numbers.
    """
    q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (B, H, T, C)  q~ = W^UK^T q^C
    scores = torch.einsum("bhtc,bsc->bhts", q_lat, c_kv) + torch.einsum("bhtr,bsr->bhts", q_r, k_r)  # (B, H, T, S)
    p = _softmax(scores.mul_(scale), mask, q_nope.dtype)  # scaled in place: scores is this function's own
    o_lat = torch.einsum("bhts,bsc->bhtc", p, c_kv)  # (B, H, T, C)  attention-weighted latent
    return torch.einsum("bhtc,hvc->bhtv", o_lat, w_uv), p  # (B, H, T, V)  o = W^UV o_lat


# ----------------------------------------------------------------------- the module
class MLAComponents(NamedTuple):
    """The intermediate tensors of MLA for the new tokens (what a lesson prints and plots)."""

    c_q: torch.Tensor | None  # (B, T, C') normalized query latent; None when q_lora_rank is None
    q_nope: torch.Tensor  # (B, H, T, D) q^C
    q_r: torch.Tensor  # (B, H, T, R) q^R, rotated
    c_kv: torch.Tensor  # (B, T, C) c^KV, normalized (cached)
    k_r: torch.Tensor  # (B, T, R) k^R, rotated, shared by all heads (cached)


class MLA(nn.Module):
    """Multi-head Latent Attention with the released checkpoint's weight names."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        d, H, C = config.hidden_size, config.num_attention_heads, config.kv_lora_rank
        D, R, V = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(d, H * (D + R), bias=False)  # W^Q, rows per head [nope; rope]
        else:
            self.q_a_proj = nn.Linear(d, config.q_lora_rank, bias=False)  # W^DQ
            self.q_a_layernorm = RMSNorm(config.q_lora_rank)  # trap 9: the query latent is normalized
            self.q_b_proj = nn.Linear(config.q_lora_rank, H * (D + R), bias=False)  # [W^UQ; W^QR] per head
        self.kv_a_proj_with_mqa = nn.Linear(d, C + R, bias=False)  # rows [W^DKV (C); W^KR (R)]
        self.kv_a_layernorm = RMSNorm(C)  # trap 9: the kv latent is normalized before caching
        self.kv_b_proj = nn.Linear(C, H * (D + V), bias=False)  # rows per head [W^UK (D); W^UV (V)]
        self.o_proj = nn.Linear(H * V, d, bias=False)  # W^O
        self.rotary_emb = RotaryEmbedding(config)
        self.softmax_scale = softmax_scale(config)
        self.record_attn = False
        self.last_attn: torch.Tensor | None = None

    @property
    def w_uk(self) -> torch.Tensor:
        """W^UK as (H, D, C), a view of kv_b_proj.weight."""
        c = self.config
        return self.kv_b_proj.weight.view(c.num_attention_heads, -1, c.kv_lora_rank)[:, : c.qk_nope_head_dim]

    @property
    def w_uv(self) -> torch.Tensor:
        """W^UV as (H, V, C), a view of kv_b_proj.weight."""
        c = self.config
        return self.kv_b_proj.weight.view(c.num_attention_heads, -1, c.kv_lora_rank)[:, c.qk_nope_head_dim :]

    def components(self, x: torch.Tensor, positions: torch.Tensor) -> MLAComponents:
        """Project h (B, T, d) at the given positions (T,) to q^C, q^R, c^KV, k^R ([V3] eqs 1-8)."""
        c = self.config
        B, T, _ = x.shape
        D, R = c.qk_nope_head_dim, c.qk_rope_head_dim
        if c.q_lora_rank is None:
            c_q, q = None, self.q_proj(x)  # (B, T, H*(D+R))
        else:
            c_q = self.q_a_layernorm(self.q_a_proj(x))  # (B, T, C')
            q = self.q_b_proj(c_q)  # (B, T, H*(D+R))
        q = q.view(B, T, c.num_attention_heads, D + R).transpose(1, 2)  # (B, H, T, D+R)
        q_nope, q_r = q.split([D, R], dim=-1)  # (B, H, T, D), (B, H, T, R)
        c_kv, k_r = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, R], dim=-1)  # (B, T, C), (B, T, R)
        c_kv = self.kv_a_layernorm(c_kv)
        cos, sin = self.rotary_emb(positions)  # (T, R/2) each
        q_r = apply_rope(q_r, cos, sin, c.rope_interleave)
        k_r = apply_rope(k_r, cos, sin, c.rope_interleave)  # from h, not from c^KV (trap 6)
        return MLAComponents(c_q, q_nope, q_r, c_kv, k_r)

    def forward(
        self, x: torch.Tensor, cache: LatentCache | ExpandedKVCache | None = None, attn_impl: str | None = None
    ) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). New tokens sit after the cached ones; causal among themselves."""
        impl = self._check(x, cache, attn_impl)
        B, T, _ = x.shape
        start = 0 if cache is None else cache.seq_len(self.layer_idx)
        comp = self.components(x, torch.arange(start, start + T, device=x.device))
        mask = causal_mask(T, start + T, x.device) if T > 1 else None  # one new token sees everything
        if isinstance(cache, ExpandedKVCache):
            k, v = expand_kv(comp.c_kv, comp.k_r, self.w_uk, self.w_uv)  # new tokens only
            k, v = cache.update(self.layer_idx, k, v)  # (B, H, S, D+R), (B, H, S, V)
            q = torch.cat((comp.q_nope, comp.q_r), dim=-1)  # (B, H, T, D+R)
            o, p = expanded_attention(q, k, v, self.softmax_scale, mask)
        else:
            c_kv, k_r = comp.c_kv, comp.k_r
            if cache is not None:
                c_kv, k_r = cache.update(self.layer_idx, c_kv, k_r)  # (B, S, C), (B, S, R)
            attend = naive_attention if impl == "naive" else absorbed_attention
            o, p = attend(comp.q_nope, comp.q_r, c_kv, k_r, self.w_uk, self.w_uv, self.softmax_scale, mask)
        self.last_attn = p.detach() if self.record_attn else None  # (B, H, T, S)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))  # (B, H, T, V) -> (B, T, H*V) -> (B, T, d)

    def _check(self, x: torch.Tensor, cache, attn_impl: str | None) -> str:
        d = self.config.hidden_size
        if x.dim() != 3 or x.shape[-1] != d:
            raise ValueError(f"MLA expects x of shape (B, T, hidden_size={d}), got {tuple(x.shape)}")
        impl = self.config.attn_impl if attn_impl is None else attn_impl
        if impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl={impl!r} is not a known attention path: use "naive" or "absorbed"')
        if cache is not None and not isinstance(cache, (LatentCache, ExpandedKVCache)):
            raise ValueError(f"cache must be a LatentCache or an ExpandedKVCache, not {type(cache).__name__}")
        if isinstance(cache, ExpandedKVCache) and impl == "absorbed":
            raise ValueError(
                "attn_impl='absorbed' needs the latent c_kv, which an ExpandedKVCache does not keep: use a LatentCache"
            )
        if cache is not None and not 0 <= self.layer_idx < cache.n_layers:
            raise ValueError(f"this is layer {self.layer_idx} but the cache has {cache.n_layers} layers")
        return impl
