"""Load balancing for DeepSeekMoE: the auxiliary-loss-free bias update and the losses it replaces.

A training loop needs two lines::

    loss = lm_loss + model_sequence_balance_loss(model, alpha=1e-4)   # [V3] eqs 17-20
    loss.backward(); optimizer.step()
    update_bias(model, gamma=1e-3)                                     # [LF] Alg. 1, [V3] 2.1.2

and, for the classic baseline, ``model_aux_loss(model, alpha)`` instead of the bias update.
MaxVio ([LF] eq 4) measures the result: ``max_violation(loads)``; ``LoadTracker`` adds up
loads over an evaluation set, per layer and per domain; ``relative_domain_loads`` and
``domain_specialization`` read a run's per-domain loads (lesson 06). ``ToyRouter`` is the smallest
system that collapses without balancing (lesson 06).

Shape letters: B sequences, T tokens per sequence, E routed experts (N_r), K active (K_r), L MoE layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .layers import eval_mode
from .moe import MoE


def named_moe_layers(moe_or_model: nn.Module) -> list[tuple[str, MoE]]:
    """(name, layer) for every :class:`~dsv3_edu.moe.MoE` inside a module (itself included), in
    registration order: the main layers (``model.layers.3.mlp``), then the MTP modules (``mtp.0.mlp``)."""
    if not isinstance(moe_or_model, nn.Module):
        raise ValueError(f"Expected an MoE layer or a model, got {type(moe_or_model).__name__}")
    return [(name, m) for name, m in moe_or_model.named_modules() if isinstance(m, MoE)]


def moe_layers(moe_or_model: nn.Module) -> list[MoE]:
    """Every :class:`~dsv3_edu.moe.MoE` inside a module (itself included), in registration order."""
    return [m for _, m in named_moe_layers(moe_or_model)]


def _require_layers(moe_or_model: nn.Module) -> list[MoE]:
    layers = moe_layers(moe_or_model)
    if not layers:
        raise ValueError(
            f"No MoE layer inside {type(moe_or_model).__name__}: pass the model (or an MoE layer), "
            "and check first_k_dense_replace < num_hidden_layers"
        )
    return layers


# --------------------------------------------------------------------------- auxiliary-loss-free


@torch.no_grad()
def update_bias(moe_or_model: nn.Module, gamma: float = 1e-3, rule: str = "sign") -> list[torch.Tensor]:
    """One bias update per MoE layer ([LF] Alg. 1, [V3] 2.1.2); call it after ``optimizer.step()``.

    With c the tokens each expert received since the last update (``tokens_per_expert``)::

        b_i <- b_i + gamma * sign(mean_j c_j - c_i)

    An overloaded expert's bias falls by exactly gamma, an underloaded one's rises by exactly
    gamma, and an expert at the mean is left alone. ``rule="proportional"`` is the alternative
    lesson 06's experiment compares (not in [LF] or [V3]): b_i <- b_i + gamma * (mean_j c_j - c_i) / mean_j c_j,
    a step proportional to the relative load error. The counts are then reset. Layers in eval
    mode are skipped: they neither count tokens nor update (evaluation must not steer routing).

    Returns the loads c (E,) used, one tensor per updated layer, in layer order (empty when
    everything is in eval mode).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma={gamma!r}: the bias update speed must be a positive number (the paper uses 1e-3)")
    if rule not in ("sign", "proportional"):
        raise ValueError(f"rule={rule!r}: use 'sign' ([LF] Alg. 1) or 'proportional'")
    used = []
    for moe in _require_layers(moe_or_model):
        if not moe.training:
            continue
        bias = moe.gate.e_score_correction_bias
        if bias.shape != moe.tokens_per_expert.shape:
            raise ValueError(
                f"e_score_correction_bias has shape {tuple(bias.shape)} but the layer has "
                f"{moe.tokens_per_expert.numel()} routed experts"
            )
        loads = moe.tokens_per_expert.clone()  # (E,)  c_i
        c = loads.double()
        if rule == "sign":
            step = gamma * torch.sign(c.mean() - c)  # (E,)  +gamma under, -gamma over, 0 at the mean
        else:
            step = gamma * (c.mean() - c) / c.mean().clamp(min=1.0)  # (E,)  relative load error
        bias.copy_((bias.double() + step).to(bias.dtype))
        moe.tokens_per_expert.zero_()
        used.append(loads)
    return used


def reset_bias(moe_or_model: nn.Module) -> None:
    """Set every balancing bias and token count back to zero (to restart an experiment)."""
    with torch.no_grad():
        for moe in _require_layers(moe_or_model):
            moe.gate.e_score_correction_bias.zero_()
            moe.tokens_per_expert.zero_()


# ------------------------------------------------------------------------------------- losses


def _check_routing(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, k: int, alpha: float):
    if scores.dim() == 2:  # one sequence (T, E)
        scores, topk_idx = scores.unsqueeze(0), topk_idx.unsqueeze(0)
    if scores.dim() != 3 or topk_idx.dim() != 3:
        raise ValueError(
            f"Expected scores (B, T, E) and topk_idx (B, T, K); got {tuple(scores.shape)} and {tuple(topk_idx.shape)}"
        )
    if scores.shape[-1] != n_experts:
        raise ValueError(f"scores has {scores.shape[-1]} experts in its last dim, but n_experts={n_experts}")
    if topk_idx.shape[-1] != k:
        raise ValueError(f"topk_idx chooses {topk_idx.shape[-1]} experts per token, but k={k}")
    if topk_idx.shape[:2] != scores.shape[:2]:
        raise ValueError(f"scores {tuple(scores.shape)} and topk_idx {tuple(topk_idx.shape)} disagree on (B, T)")
    if topk_idx.dtype not in (torch.int32, torch.int64) or topk_idx.min() < 0 or topk_idx.max() >= n_experts:
        raise ValueError(f"topk_idx must hold integer expert ids in [0, {n_experts})")
    if not alpha >= 0:
        raise ValueError(f"alpha={alpha!r}: the loss weight must be >= 0")
    return scores, topk_idx


def expert_counts(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens sent to each expert: (..., T, K) ids -> (..., E) counts (float)."""
    one_hot = torch.zeros(*topk_idx.shape[:-2], n_experts, dtype=torch.float32, device=topk_idx.device)
    flat = topk_idx.reshape(*topk_idx.shape[:-2], -1)  # (..., T*K)
    return one_hot.scatter_add_(-1, flat, torch.ones_like(flat, dtype=torch.float32))


def sequence_balance_loss(
    scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, k: int, alpha: float
) -> torch.Tensor:
    """The complementary sequence-wise balance loss of [V3] eqs 17-20, averaged over sequences.

    Per sequence of T tokens::

        f_i = N_r / (K_r T) * sum_t 1[i in topk(t)]          eq 18 (no gradient: a count)
        s'_{i,t} = s_{i,t} / sum_j s_{j,t}                    eq 19 (unbiased sigmoid scores)
        P_i = (1/T) sum_t s'_{i,t}                            eq 20
        L_Bal = alpha * sum_i f_i P_i                         eq 17

    then the mean over the B sequences. ``scores`` (B, T, E) or (T, E), ``topk_idx`` (B, T, K) or (T, K).
    A perfectly balanced sequence with uniform scores gives alpha * 1.
    """
    scores, topk_idx = _check_routing(scores, topk_idx, n_experts, k, alpha)
    T = scores.shape[1]
    normalized = scores / scores.sum(dim=-1, keepdim=True)  # (B, T, E)  eq 19
    P = normalized.mean(dim=1)  # (B, E)  eq 20
    f = expert_counts(topk_idx, n_experts) * (n_experts / (k * T))  # (B, E)  eq 18
    return alpha * (f * P).sum(dim=-1).mean()  # eq 17 per sequence, then mean over sequences


def aux_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, k: int, alpha: float) -> torch.Tensor:
    """The classic auxiliary balance loss: the baseline that auxiliary-loss-free balancing replaces.

    DeepSeek-V2's expert-level balance loss ([V2] eqs 12-14; the Switch Transformer's
    alpha * N * sum_i f_i P_i, Fedus et al. 2021, eq 4, is the same for K=1), computed over
    all B*T tokens of the batch at once (not per sequence)::

        f_i = N_r / (K_r B T) * sum_{b,t} 1[i in topk(b, t)],   P_i = mean_{b,t} s'_{i,t},
        L_Aux = alpha * sum_i f_i P_i

    The affinities are V3's sigmoid scores normalized over experts, s' = s / sum_j s (as [V3]
    eq 19 does), so P is a distribution over experts like the softmax affinities of V2 and Switch.
    """
    scores, topk_idx = _check_routing(scores, topk_idx, n_experts, k, alpha)
    E = n_experts
    return sequence_balance_loss(scores.reshape(1, -1, E), topk_idx.reshape(1, -1, k), E, k, alpha)


def _routings(model: nn.Module):
    for i, moe in enumerate(_require_layers(model)):
        if moe.last_routing is None:
            raise ValueError(f"MoE layer {i} has no routing yet: run a forward pass before computing the loss")
        yield moe, moe.last_routing


def model_sequence_balance_loss(model: nn.Module, alpha: float = 1e-4) -> torch.Tensor:
    """Sum over MoE layers of :func:`sequence_balance_loss` on the routing of the last forward."""
    return sum(
        sequence_balance_loss(r.scores, r.topk_idx, moe.n_routed_experts, moe.top_k, alpha)
        for moe, r in _routings(model)
    )


def model_aux_loss(model: nn.Module, alpha: float) -> torch.Tensor:
    """Sum over MoE layers of the batch-level :func:`aux_loss` on the routing of the last forward.

    alpha is the knob [LF] Fig. 1 sweeps: larger balances better and hurts perplexity more
    (the Switch Transformer used 1e-2).
    """
    return sum(aux_loss(r.scores, r.topk_idx, moe.n_routed_experts, moe.top_k, alpha) for moe, r in _routings(model))


# ---------------------------------------------------------------------------------- measuring


def max_violation(loads: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """MaxVio = (max_i Load_i - mean Load) / mean Load ([LF] eq 4), along the last dim.

    0 is perfect balance; 1 means the busiest expert gets twice its fair share. Works on
    counts (E,) or on a stack of them (L, E) -> (L,).
    """
    loads = torch.as_tensor(loads, dtype=torch.float64)
    if loads.dim() == 0 or loads.shape[-1] == 0:
        raise ValueError("max_violation needs a vector of per-expert loads (E,) or a stack (..., E)")
    if (loads < 0).any():
        raise ValueError("loads are token counts and cannot be negative")
    mean = loads.mean(dim=-1)
    if (mean == 0).any():
        raise ValueError("MaxVio is undefined when no token was routed (mean load 0)")
    return (loads.max(dim=-1).values - mean) / mean


def relative_domain_loads(run: dict[str, Any], layer: int, by: str = "fair_share") -> tuple[torch.Tensor, list[str]]:
    """(E, domains) per-domain loads of one MoE layer, relative to a reference.

    ``by="fair_share"``: load / fair share (1 is balanced, 2 twice the fair share; [V3] Fig. 9). It mixes two
    things: an expert busy on *all* text (global imbalance) is red in every domain.
    ``by="global"``: the expert's share of the domain's tokens / its share of all tokens. 1 means the expert
    takes the same share of this domain as of all text; above 1 it specializes in the domain. A globally
    busy expert that treats every domain alike is 1 everywhere: specialization, with global imbalance
    divided out.
    """
    if by not in ("fair_share", "global"):
        raise ValueError(f"by must be 'fair_share' or 'global', got {by!r}")
    domains = list(run["domain_loads"])
    loads = torch.tensor([run["domain_loads"][d][layer] for d in domains], dtype=torch.float64).T  # (E, D)
    if by == "fair_share":
        return loads / loads.mean(dim=0, keepdim=True), domains
    share = loads / loads.sum(dim=0, keepdim=True)  # (E, D): expert's share of each domain's tokens
    overall = loads.sum(dim=1, keepdim=True) / loads.sum()  # (E, 1): expert's share of all tokens
    return share / overall, domains


def domain_specialization(run: dict[str, Any], layer: int) -> tuple[torch.Tensor, list[str]]:
    """(domains,) how differently each domain is routed from all text: half the L1 distance between the
    domain's distribution over experts and the overall one (0: routed like everything else; 1: disjoint
    experts). It is the fraction of the domain's token-expert pairs that would have to move to other
    experts to look like the average. Global imbalance does not count: it is in both distributions."""
    domains = list(run["domain_loads"])
    loads = torch.tensor([run["domain_loads"][d][layer] for d in domains], dtype=torch.float64).T  # (E, D)
    share = loads / loads.sum(dim=0, keepdim=True)
    overall = loads.sum(dim=1, keepdim=True) / loads.sum()
    return 0.5 * (share - overall).abs().sum(dim=0), domains


def last_loads(model: nn.Module) -> torch.Tensor:
    """Tokens per expert in the last forward, per MoE layer: (L, E)."""
    return torch.stack([expert_counts(r.topk_idx, moe.n_routed_experts).sum(0) for moe, r in _routings(model)])


class LoadTracker:
    """Adds up expert loads over an evaluation set, per MoE layer and per domain ("global" MaxVio).

    Call ``update(domains)`` after each forward; ``domains`` names each sequence of the batch
    (or None). ``loads`` is (L, E); ``domain_loads[name]`` is (L, E); ``names`` labels the L rows.
    It reads ``last_routing``, so every MoE layer must have run in that forward (a forward that
    skips the MTP modules leaves their routing from an earlier batch).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers = _require_layers(model)
        self.names = [name or "moe" for name, _ in named_moe_layers(model)]
        E = self.layers[0].n_routed_experts
        self.loads = torch.zeros(len(self.layers), E, dtype=torch.float64)  # (L, E)
        self.domain_loads: dict[str, torch.Tensor] = {}

    def update(self, domains: Sequence[str] | None = None) -> None:
        per_seq = []
        for moe, r in _routings(self.model):
            per_seq.append(expert_counts(r.topk_idx, moe.n_routed_experts).double().cpu())  # (B, E)
        per_seq = torch.stack(per_seq, dim=1)  # (B, L, E)
        self.loads += per_seq.sum(0)
        if domains is not None:
            if len(domains) != per_seq.shape[0]:
                raise ValueError(f"{len(domains)} domain names for a batch of {per_seq.shape[0]} sequences")
            for name, counts in zip(domains, per_seq):
                if name not in self.domain_loads:
                    self.domain_loads[name] = torch.zeros_like(self.loads)
                self.domain_loads[name] += counts

    def max_violation(self) -> torch.Tensor:
        """Global MaxVio per layer: (L,)."""
        return max_violation(self.loads)


@torch.no_grad()
def global_loads(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> LoadTracker:
    """Run ``model(input_ids)`` in eval mode over ``(input_ids, labels, domains)`` batches and
    return the filled :class:`LoadTracker` (the model's train/eval mode is restored)."""
    tracker = LoadTracker(model)
    with eval_mode(model):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            input_ids, _, domains = batch
            model(input_ids)
            tracker.update(domains)
    return tracker


# ---------------------------------------------------------------------------- a toy router (lesson 06)

GAMMA_RANGE = (1e-4, 0.3)  # the gammas ToyRouter accepts (the paper uses 1e-3)


class ToyRouter:
    """E experts, top-k of sigmoid(x W^T) + b, and a gate that drifts toward the experts it already uses.

    Each step draws ``tokens`` fresh tokens x = m + noise (a shared direction m of length ``shared``,
    seeded by (seed, step)), routes them, then

        W_i <- (1 - decay) W_i + lr * sum_{t routed to i} x_t / tokens      (rich get richer)
        b_i <- b_i + gamma * sign(mean_j c_j - c_i)                          (only if balance)

    ``loads``, ``biases``, ``maxvio`` hold one entry per step taken.
    """

    def __init__(self, n_experts: int = 8, top_k: int = 2, dim: int = 16, tokens: int = 1024, lr: float = 0.1,
                 decay: float = 0.05, gamma: float = 0.01, balance: bool = True, shared: float = 1.0,
                 init_std: float = 0.3, seed: int = 0):
        if not (isinstance(n_experts, int) and isinstance(top_k, int) and 1 <= top_k < n_experts):
            raise ValueError(f"top_k={top_k!r}, n_experts={n_experts!r}: need 1 <= top_k < n_experts")
        self.n_experts, self.top_k, self.dim, self.tokens = n_experts, top_k, dim, tokens
        self.lr, self.decay, self.balance, self.seed = lr, decay, balance, seed
        self.gamma = gamma
        self.shared = torch.zeros(dim)
        self.shared[0] = shared  # m: the direction every token shares
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(n_experts, dim, generator=g) * init_std  # (E, d) gate rows e_i
        self.bias = torch.zeros(n_experts)  # (E,) b
        self.steps = 0
        self.loads: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.maxvio: list[float] = []

    @property
    def gamma(self) -> float:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        lo, hi = GAMMA_RANGE
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise ValueError(f"gamma={value!r} is out of range: use a number from {lo:g} to {hi:g} "
                             "(the paper uses 0.001)")
        self._gamma = float(value)

    def tokens_at(self, step: int) -> torch.Tensor:
        """The tokens of step ``step``: (N, d), a function of (seed, step) only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + step + 1)
        return self.shared + torch.randn(self.tokens, self.dim, generator=g)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_idx (N, K), scores s (N, E)): choose by s + b, as [V3] eq 16."""
        scores = torch.sigmoid(x @ self.weight.T)  # (N, E)
        return (scores + self.bias).topk(self.top_k, dim=-1).indices, scores

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            x = self.tokens_at(self.steps)  # (N, d)
            idx, _ = self.route(x)
            chosen = torch.zeros(self.tokens, self.n_experts).scatter_(1, idx, 1.0)  # (N, E)
            c = chosen.sum(0)  # (E,) tokens per expert
            self.weight = (1 - self.decay) * self.weight + self.lr * chosen.T @ x / self.tokens
            if self.balance:
                self.bias = self.bias + self.gamma * torch.sign(c.mean() - c)
            self.steps += 1
            self.loads.append(c)
            self.biases.append(self.bias.clone())
            self.maxvio.append(float((c.max() - c.mean()) / c.mean()))
