"""DeepSeekMoE: fine-grained routed experts, shared experts and the sigmoid router ([V3] eqs 12-16).

One MoE layer computes, for every token u_t (the residual is added by the decoder layer)::

    h'_t = sum_{i<=N_s} FFN^(s)_i(u_t) + sum_{i<=N_r} g_{i,t} FFN^(r)_i(u_t)          [V3] eq 12
    s_{i,t} = sigmoid(u_t^T e_i)                                                    [V3] eq 15
    g_{i,t} = s_{i,t} / sum_{j chosen} s_{j,t} * routed_scaling_factor  if i chosen  [V3] eqs 13-14
    chosen  = TopK over i of (s_{i,t} + b_i), inside the topk_group best groups      [V3] eq 16

The bias b (``e_score_correction_bias``) only *selects* experts; the gate weights
always come from the unbiased s. It is a buffer moved by ``dsv3_edu.balance.update_bias``,
never by the optimizer. Names follow the released checkpoint ([OFF] / [HF]):
``gate.weight``, ``gate.e_score_correction_bias``, ``experts.{j}.{gate,up,down}_proj``,
``shared_experts.{gate,up,down}_proj``.

Shape letters: B batch, T positions, N = B*T tokens, d hidden size, E routed experts
(N_r), K active routed experts per token (K_r), G groups (n_group).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Dense layers, routed and shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """The DeepSeek-V3 router: sigmoid affinities, bias-corrected group-limited top-k ([OFF] ``Gate``).

    ``forward(x)`` takes tokens (N, d) (any leading shape is flattened) and returns
    ``(topk_idx (N, K) long, topk_weight (N, K) float32, scores (N, E) float32)`` where
    ``scores`` are the unbiased sigmoid affinities s.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.n_routed_experts = config.n_routed_experts  # E
        self.top_k = config.num_experts_per_tok  # K
        self.n_group = config.n_group  # G
        self.topk_group = config.topk_group  # M
        self.routed_scaling_factor = config.routed_scaling_factor
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))  # e_i as rows
        nn.init.normal_(self.weight, std=config.initializer_range)
        # b in [V3] eq 16: a buffer (saved in state_dict, never seen by the optimizer).
        self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"Gate got tokens of size {x.shape[-1]} but hidden_size is {self.hidden_size}")
        bias = self.e_score_correction_bias
        if bias.shape != (self.n_routed_experts,):
            raise ValueError(
                f"e_score_correction_bias has shape {tuple(bias.shape)}; it needs one value per routed expert, "
                f"shape ({self.n_routed_experts},)"
            )
        x = x.reshape(-1, self.hidden_size)  # (N, d)
        logits = F.linear(x.float(), self.weight.float())  # (N, E), in fp32 as [HF] 5.24 ([OFF]: model dtype)
        scores = logits.sigmoid()  # (N, E)  s, [V3] eq 15
        biased = scores + bias.float()  # (N, E)  s + b: used to choose, never to weigh
        if self.n_group > 1:
            grouped = biased.view(-1, self.n_group, self.n_routed_experts // self.n_group)  # (N, G, E/G)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)  sum of top-2 per group (V3)
            keep_groups = group_scores.topk(self.topk_group, dim=-1).indices  # (N, M)
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep_groups, True)  # (N, G)
            expert_mask = group_mask.repeat_interleave(self.n_routed_experts // self.n_group, dim=1)  # (N, E)
            # -inf, not 0.0: with negative biases a 0.0 would beat every kept expert (trap 2).
            biased = biased.masked_fill(~expert_mask, float("-inf"))
        topk_idx = biased.topk(self.top_k, dim=-1).indices  # (N, K), best first
        topk_weight = scores.gather(1, topk_idx)  # (N, K)  from the UNBIASED s
        if self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)  # [V3] eq 13
        topk_weight = topk_weight * self.routed_scaling_factor
        return topk_idx, topk_weight, scores

    def extra_repr(self) -> str:
        return (
            f"experts={self.n_routed_experts}, top_k={self.top_k}, groups={self.n_group}, "
            f"topk_group={self.topk_group}, scale={self.routed_scaling_factor}"
        )


class Routing(NamedTuple):
    """What the router decided in the last forward of an MoE layer (for balancing and plots)."""

    topk_idx: torch.Tensor  # (B, T, K) long: chosen experts, best first
    topk_weight: torch.Tensor  # (B, T, K): gate weights g (detached)
    scores: torch.Tensor  # (B, T, E) float32: unbiased s (attached to the graph in training)


class MoE(nn.Module):
    """A DeepSeekMoE layer: shared experts + gated routed experts ([V3] eq 12). No residual.

    After every forward, ``last_routing`` holds a :class:`Routing`. Its ``scores`` stay attached
    to the autograd graph when the module is training with grad enabled (the sequence-wise
    balance loss needs their gradient) and are detached otherwise. In training mode the layer
    also adds the tokens each expert received to ``tokens_per_expert`` (E,), which
    ``balance.update_bias`` reads and resets.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.n_routed_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.gate = Gate(config)
        self.experts = nn.ModuleList(
            MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.n_routed_experts)
        )
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts > 0
            else None
        )
        # c_i of [LF] Alg. 1: tokens routed to expert i since the last bias update (not in state_dict).
        self.register_buffer("tokens_per_expert", torch.zeros(config.n_routed_experts, dtype=torch.long),
                             persistent=False)
        self.last_routing: Routing | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"MoE expects (B, T, {self.hidden_size}) hidden states, got {tuple(x.shape)}")
        B, T, d = x.shape
        tokens = x.reshape(B * T, d)  # (N, d)
        topk_idx, topk_weight, scores = self.gate(tokens)  # (N, K), (N, K), (N, E)
        out = self._routed(tokens, topk_idx, topk_weight)  # (N, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)
        self._record(topk_idx, topk_weight, scores, B, T)
        return out.view(B, T, d)

    def _routed(self, tokens: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor) -> torch.Tensor:
        """sum_k g_k Expert_k(u): group the N*K (token, expert) pairs by expert, one matmul batch per expert."""
        N, K = topk_idx.shape
        flat_expert = topk_idx.reshape(-1)  # (N*K,)
        order = flat_expert.argsort(stable=True)  # (N*K,) pairs sorted by expert id
        token_of = order // K  # (N*K,) the token each sorted pair belongs to
        counts = torch.bincount(flat_expert, minlength=self.n_routed_experts).tolist()  # (E,)
        x_sorted = tokens[token_of]  # (N*K, d) contiguous run of tokens per expert
        w_sorted = topk_weight.reshape(-1)[order]  # (N*K,)
        outputs = []
        for expert, x_e, w_e in zip(self.experts, x_sorted.split(counts), w_sorted.split(counts)):
            if x_e.shape[0] == 0:
                outputs.append(x_e)
                continue
            outputs.append((expert(x_e) * w_e[:, None]).to(tokens.dtype))  # (n_e, d)
        y_sorted = torch.cat(outputs)  # (N*K, d)
        return torch.zeros_like(tokens).index_add_(0, token_of, y_sorted)  # (N, d)

    def _record(self, topk_idx, topk_weight, scores, B: int, T: int) -> None:
        keep_graph = self.training and torch.is_grad_enabled()
        self.last_routing = Routing(
            topk_idx=topk_idx.detach().view(B, T, -1),
            topk_weight=topk_weight.detach().view(B, T, -1),
            scores=(scores if keep_graph else scores.detach()).view(B, T, -1),
        )
        if self.training:
            with torch.no_grad():
                self.tokens_per_expert += torch.bincount(topk_idx.reshape(-1), minlength=self.n_routed_experts)


@torch.no_grad()
def moe_reference_forward(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The same layer as a plain loop over tokens: the definition the vectorized dispatch must match.

    Does not touch ``last_routing`` or ``tokens_per_expert``.
    """
    B, T, d = x.shape
    tokens = x.reshape(B * T, d)
    topk_idx, topk_weight, _ = moe.gate(tokens)
    out = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        u = tokens[t]
        y = moe.shared_experts(u) if moe.shared_experts is not None else torch.zeros_like(u)
        for k in range(topk_idx.shape[1]):
            y = y + topk_weight[t, k] * moe.experts[int(topk_idx[t, k])](u)
        out[t] = y
    return out.view(B, T, d)
