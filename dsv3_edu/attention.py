"""Plain causal attention with a KV cache: MHA, GQA and MQA in one module (lesson 01).

Scaled dot-product attention ("Attention Is All You Need", eq 1), per head::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V,   M[t, s] = -inf where s > t (causal)

Query heads H share key/value heads n_kv ([V2] Table 1): MHA n_kv = H, GQA 1 < n_kv < H
(query head h reads key/value head h // (H / n_kv)), MQA n_kv = 1. Only K and V of past
tokens are needed to decode the next one, so a decoder keeps them in a ``KVCache`` and feeds
one new token per step. The cache holds, per layer, ``n_kv x (d_k + d_v)`` values per token:
the number ``dsv3_edu.accounting.kv_cache_bytes`` counts.

``ToyLM`` is a tiny decoder (learned positions, pre-norm blocks) built from this attention,
so lesson 01 can show that greedy decoding with and without the cache gives the same tokens.
Weight names follow DeepSeek-V3's checkpoint where the parts exist there
(``embed_tokens``, ``self_attn.{q,k,v,o}_proj``, ``input_layernorm``, ``lm_head``).

Shape letters: B batch, T new (query) positions, S cached positions (keys), H query heads,
G key/value heads (n_kv), D key width (d_k), Dv value width (d_v), d hidden size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return value


def attention_kind(n_heads: int, n_kv_heads: int) -> str:
    """ "mha", "gqa" or "mqa" for H query heads and G key/value heads (raises if G cannot serve H)."""
    check_heads(n_heads, n_kv_heads)
    if n_kv_heads == n_heads:
        return "mha"
    return "mqa" if n_kv_heads == 1 else "gqa"


def check_heads(n_heads: int, n_kv_heads: int) -> None:
    """Raise a ValueError that says how to fix a head count that grouped attention cannot use."""
    _positive_int("n_heads", n_heads)
    _positive_int("n_kv_heads", n_kv_heads)
    if n_kv_heads > n_heads:
        raise ValueError(
            f"n_kv_heads={n_kv_heads} is more than n_heads={n_heads}: each key/value head serves one or more "
            "query heads, so use at most n_heads key/value heads (n_kv_heads=n_heads is MHA)"
        )
    if n_heads % n_kv_heads:
        divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
        raise ValueError(
            f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}: every key/value head must serve the same "
            f"number of query heads. Use one of {divisors}"
        )


def causal_mask(t: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, S) mask, True where query t may NOT see key s.

    The T queries are the last T of the S positions, so query i sits at position S - T + i and
    sees keys 0..S-T+i. ``triu(diagonal=S-T+1)``: with diagonal=0 a token could not see itself
    and the first row would be all -inf, a NaN after softmax (trap 15 of notebooks/REFERENCE.md).
    """
    if t > s:
        raise ValueError(f"causal_mask: {t} queries but only {s} keys; the keys include the queries' own positions")
    return torch.ones(t, s, dtype=torch.bool, device=device).triu(diagonal=s - t + 1)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, return_weights: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D) + mask) v with an explicit softmax, for teaching.

    q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) -> (B, H, T, Dv) [and the weights (B, H, T, S)].
    Equal to ``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`` when T == S.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal:
        scores = scores.masked_fill(causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, T, S), each row sums to 1
    out = weights @ v  # (B, H, T, Dv)
    return (out, weights) if return_weights else out


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, G, S, D) -> (B, G * n_rep, S, D): key/value head g serves query heads g*n_rep .. g*n_rep+n_rep-1.

    ``repeat_interleave``, not ``repeat``: ``repeat`` would give head order 0,1,0,1 instead of 0,0,1,1.
    """
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class LayerCache:
    """Per layer, a tuple of tensors that grow along the sequence axis ``seq_dim`` (one cache base for the course).

    ``seq_len(layer_idx=0)`` is the number of positions a layer holds, ``crop(n)`` keeps the first n positions
    of every layer (rolls back rejected drafts), ``numel()``/``nbytes()`` count what is stored. Subclasses
    say what one layer holds: :class:`KVCache` per-head K and V, ``dsv3_edu.mla.LatentCache`` MLA's latent.
    """

    seq_dim = 1

    def __init__(self, n_layers: int) -> None:
        self.n_layers = _positive_int("n_layers", n_layers)
        self.layers: list[tuple[torch.Tensor, ...] | None] = [None] * n_layers

    def _check_layer(self, layer_idx: int) -> None:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < self.n_layers:
            raise ValueError(f"layer_idx={layer_idx!r}: this cache has layers 0..{self.n_layers - 1}")

    def _update(self, layer_idx: int, new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self._check_layer(layer_idx)
        old = self.layers[layer_idx]
        if old is not None:
            if old[0].shape[0] != new[0].shape[0]:
                raise ValueError(
                    f"the cache of layer {layer_idx} holds batch size {old[0].shape[0]} but the input has "
                    f"{new[0].shape[0]}: use one cache per batch (start a new cache for a new batch)"
                )
            d = self.seq_dim
            if any(o.shape[:d] + o.shape[d + 1:] != n.shape[:d] + n.shape[d + 1:] for o, n in zip(old, new)):
                raise ValueError(
                    f"layer {layer_idx} caches {[tuple(o.shape) for o in old]}; the new "
                    f"{[tuple(n.shape) for n in new]} "
                    f"differ outside the sequence axis (dim {d})"
                )
            new = tuple(torch.cat((o, n), dim=d) for o, n in zip(old, new))
        self.layers[layer_idx] = new
        return new

    def seq_len(self, layer_idx: int = 0) -> int:
        """Positions cached in a layer (layer 0 by default; after a full forward every layer holds as many)."""
        self._check_layer(layer_idx)
        entry = self.layers[layer_idx]
        return 0 if entry is None else entry[0].shape[self.seq_dim]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer (roll back rejected draft tokens)."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"crop(length={length!r}): the length to keep must be a whole number >= 0")
        self.layers = [
            None if e is None else tuple(t.narrow(self.seq_dim, 0, min(length, t.shape[self.seq_dim])) for t in e)
            for e in self.layers
        ]

    def reset(self) -> None:
        """Forget every position."""
        self.layers = [None] * self.n_layers

    def numel(self) -> int:
        """Values stored over all layers."""
        return sum(t.numel() for e in self.layers if e is not None for t in e)

    def nbytes(self) -> int:
        """Bytes stored over all layers (what the cache costs in memory)."""
        return sum(t.numel() * t.element_size() for e in self.layers if e is not None for t in e)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_layers={self.n_layers}, seq_len={self.seq_len()}, numel={self.numel()}, "
                f"nbytes={self.nbytes()})")


class KVCache(LayerCache):
    """Keys and values of the tokens seen so far, per layer and head: K (B, G, S, D) and V (B, G, S, Dv).

    ``update(layer_idx, k_new, v_new)`` appends T new positions along the sequence axis (dim 2)
    and returns the whole K and V for that layer; ``k[i]`` and ``v[i]`` are layer i's. Production caches
    preallocate the full context instead of concatenating (torch.cat copies everything every step).
    Lesson 01's attention (G = H, GQA or MQA heads) and MLA's expanded comparison cache
    (``dsv3_edu.mla.ExpandedKVCache`` is this class: K is d_h + d_h^R wide, V d_h) both use it.
    """

    seq_dim = 2

    def update(self, layer_idx: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k_new (B, G, T, D) and v_new (B, G, T, Dv); return K (B, G, S+T, D) and V (B, G, S+T, Dv)."""
        if k_new.dim() != 4 or v_new.dim() != 4:
            raise ValueError(
                f"KVCache.update wants 4-d tensors (B, n_kv_heads, T, head_dim); got k {tuple(k_new.shape)}, "
                f"v {tuple(v_new.shape)} (an MLA latent c_kv, k_r goes in a dsv3_edu.mla.LatentCache)"
            )
        if k_new.shape[:3] != v_new.shape[:3]:
            raise ValueError(
                f"k {tuple(k_new.shape)} and v {tuple(v_new.shape)} must agree on (B, n_kv_heads, T)"
            )
        return self._update(layer_idx, (k_new, v_new))

    @property
    def k(self) -> list[torch.Tensor | None]:
        """Per layer, the cached K (B, G, S, D), or None before the layer's first update."""
        return [None if e is None else e[0] for e in self.layers]

    @property
    def v(self) -> list[torch.Tensor | None]:
        """Per layer, the cached V (B, G, S, Dv), or None before the layer's first update."""
        return [None if e is None else e[1] for e in self.layers]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with G key/value heads: MHA (G = H), GQA, MQA (G = 1).

    ``head_dim`` is the query/key width D, ``v_head_dim`` the value width Dv (DeepSeek-V3's heads
    have D = 192, Dv = 128; plain models use D = Dv = hidden_size / n_heads).
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
    ):
        super().__init__()
        _positive_int("hidden_size", hidden_size)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_heads(n_heads, n_kv_heads)
        if head_dim is None:
            if hidden_size % n_heads:
                raise ValueError(
                    f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}: pass head_dim explicitly "
                    "or choose n_heads that divides hidden_size"
                )
            head_dim = hidden_size // n_heads
        self.hidden_size = hidden_size
        self.n_heads = n_heads  # H
        self.n_kv_heads = n_kv_heads  # G
        self.head_dim = _positive_int("head_dim", head_dim)  # D
        self.v_head_dim = _positive_int("v_head_dim", head_dim if v_head_dim is None else v_head_dim)  # Dv
        self.kind = attention_kind(n_heads, n_kv_heads)
        self.q_proj = nn.Linear(hidden_size, n_heads * self.head_dim, bias=False)  # W^Q
        self.k_proj = nn.Linear(hidden_size, n_kv_heads * self.head_dim, bias=False)  # W^K
        self.v_proj = nn.Linear(hidden_size, n_kv_heads * self.v_head_dim, bias=False)  # W^V
        self.o_proj = nn.Linear(n_heads * self.v_head_dim, hidden_size, bias=False)  # W^O

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). With a cache, x holds only the new positions and their K, V are appended."""
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (B, T, {self.hidden_size}); got {tuple(x.shape)}")
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, G, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.v_head_dim).transpose(1, 2)  # (B, G, T, Dv)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # (B, G, S, D), (B, G, S, Dv) with S = cached + T
        n_rep = self.n_heads // self.n_kv_heads
        out = scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep))  # (B, H, T, Dv)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.v_head_dim)  # (B, T, H*Dv)
        return self.o_proj(out)  # (B, T, d)

    def extra_repr(self) -> str:
        return (
            f"{self.kind}: n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, v_head_dim={self.v_head_dim}"
        )


class GeluMLP(nn.Module):
    """A plain GELU feed-forward, 4x wide (lesson 05 replaces it with SwiGLU experts)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, hidden_size, n_heads, n_kv_heads, head_dim, v_head_dim, intermediate_size):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(hidden_size, eps=1e-6)
        self.self_attn = CausalSelfAttention(hidden_size, n_heads, n_kv_heads, head_dim, v_head_dim)
        self.post_attention_layernorm = nn.RMSNorm(hidden_size, eps=1e-6)
        self.mlp = GeluMLP(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


class ToyLM(nn.Module):
    """A tiny decoder LM on CausalSelfAttention: embeddings (tokens + learned positions), n_layers
    pre-norm blocks, final RMSNorm, output head. Seeded init: the same arguments give the same weights."""

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        max_seq_len: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("n_layers", n_layers), ("max_seq_len", max_seq_len)):
            _positive_int(name, value)
        self.vocab_size, self.n_layers, self.max_seq_len = vocab_size, n_layers, max_seq_len
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.embed_positions = nn.Embedding(max_seq_len, hidden_size)  # RoPE replaces this in lesson 02
        self.layers = nn.ModuleList(
            Block(hidden_size, n_heads, n_kv_heads, head_dim, v_head_dim, 4 * hidden_size) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(hidden_size, eps=1e-6)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.reset_parameters(seed)

    @classmethod
    def from_config(cls, config, n_kv_heads: int | None = None, max_seq_len: int = 256, seed: int = 0) -> ToyLM:
        """A toy with a ModelConfig's sizes (d, l, n_h, d_h + d_h^R, d_h, vocabulary) and n_kv_heads K/V heads,
        so its cache matches ``kv_cache_bytes_per_token(config, ...)``."""
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            n_kv_heads=n_kv_heads,
            head_dim=config.qk_head_dim,
            v_head_dim=config.v_head_dim,
            max_seq_len=max_seq_len,
            seed=seed,
        )

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Normal(0, 1/sqrt(fan_in)) for projections, N(0, 1) for embeddings, ones for norms, from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab). With a cache, idx are the next T tokens after it."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids; got shape {tuple(idx.shape)}")
        start = 0 if cache is None else cache.seq_len()
        if start + idx.shape[1] > self.max_seq_len:
            raise ValueError(
                f"{start + idx.shape[1]} positions exceed max_seq_len={self.max_seq_len}; build ToyLM with a "
                "larger max_seq_len"
            )
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.embed_tokens(idx) + self.embed_positions(pos)  # (B, T, d)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i)
        return self.lm_head(self.norm(x))  # (B, T, vocab)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Greedy decoding: append the argmax token max_new_tokens times. idx (B, T) -> (B, T + max_new_tokens).

        use_cache=False recomputes the whole prefix every step (T, T+1, T+2, ... positions);
        use_cache=True runs the prompt once (prefill), then one position per step (decode).
        Pass ``cache`` (empty) to keep it and look at it afterwards.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a non-negative integer")
        if cache is not None and not use_cache:
            raise ValueError("a cache was passed with use_cache=False; pass use_cache=True to fill it")
        if cache is not None and cache.seq_len():
            raise ValueError(f"generate needs an empty cache; this one already holds {cache.seq_len()} positions")
        if not use_cache:
            for _ in range(max_new_tokens):
                logits = self(idx)  # (B, T_so_far, vocab): every position again
                idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            return idx
        cache = self.new_cache() if cache is None else cache
        if max_new_tokens == 0:
            return idx
        logits = self(idx, cache)  # prefill: the whole prompt once
        for step in range(max_new_tokens):
            next_token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
            if step + 1 < max_new_tokens:
                logits = self(next_token, cache)  # decode: one new position
        return idx
