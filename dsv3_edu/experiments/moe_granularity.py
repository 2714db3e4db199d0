"""Fine-grained and shared experts at equal cost: does DeepSeekMoE's split pay on the course corpus? (lesson 05)

Every arm is the same tiny MoE language model (2 layers, every FFN an MoE layer, d=64, no MTP, the
"balance" preset's attention) with the same *total* routed+shared expert parameters and the same
*activated* expert parameters per token; only how they are cut differs ([DSMoE] 3.1-3.2, [V3] 2.1.2):

================  ===========  =================  ======  ======  ======================
arm               routed E     expert width        top-K   shared  activated / total width
================  ===========  =================  ======  ======  ======================
``coarse``         8           64                   2       0       128 / 512
``fine_x2``        16          32                   4       0       128 / 512
``fine_x4``        32          16                   8       0       128 / 512
``fine_x4_shared`` 31          16                   7       1 x 16  128 / 512
================  ===========  =================  ======  ======  ======================

(width = SwiGLU intermediate size; parameters are 3 * d * width, so equal widths mean equal parameters.)
The coarse arm is top-2, not top-1: with V3's normalized sigmoid gate a top-1 weight is always 1, so the
router would get no gradient. Routing is not group-limited in any arm (n_group=1), balancing is V3's
bias update (gamma = 1e-3) in every arm, and every arm trains with the same seeds, batches, steps and lr.

Metric: validation loss (cross-entropy per byte, lower is better). Extra per seed:

- ``specialization``: how much the routing tells about the domain, with imbalance factored out.
  Per MoE layer, count the (token, chosen expert) pairs n[d, i] over the validation set (domain d,
  expert i), with n_i = sum_d n[d, i] (expert i's global load) and q_d = sum_i n[d, i] / N (domain d's
  share of all pairs). Expert i's domain mix is p_i(d) = n[d, i] / n_i. Then::

      specialization = sum_i (n_i / N) * KL(p_i || q) / H(q)  =  I(domain; expert) / H(domain)

  averaged over layers. Each expert is compared with the domain mix of *all* tokens, after dividing by
  its own load n_i, so an overloaded expert that sees the usual mix scores 0 however busy it is: 0 means
  routing carries no information about the domain, 1 means every expert serves a single domain.
- ``specialization_init``: the same for the untrained model (routing of random weights already depends
  on the bytes, so part of any score is byte identity, not learned specialization);
- ``lift``: per layer, the (4, E) matrix n[d, i] / (n_i q_d) (1 = the expert sees domain d as often as
  the corpus does; 2 = twice as often), and ``domain_loads``: the raw (4, L, E) counts n[d, i]: what lesson
  05 draws its routing heatmaps from (a trained model, not random embeddings);
- ``maxvio_global`` (balance, [LF] eq 4), ``domain_loss`` per domain, ``n_params`` (total, activated).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data import DOMAINS

NAME = "moe_granularity"
QUESTION = ("At equal total and activated parameters, do more, smaller experts (and a shared expert) "
            "give a lower validation loss and more domain specialization than a few large ones?")
METRIC = "validation loss (nats per byte)"
HIGHER_IS_BETTER = False

TOTAL_WIDTH, ACTIVE_WIDTH = 512, 128
ARMS: dict[str, dict[str, Any]] = {
    "coarse": dict(n_routed_experts=8, moe_intermediate_size=64, num_experts_per_tok=2, n_shared_experts=0),
    "fine_x2": dict(n_routed_experts=16, moe_intermediate_size=32, num_experts_per_tok=4, n_shared_experts=0),
    "fine_x4": dict(n_routed_experts=32, moe_intermediate_size=16, num_experts_per_tok=8, n_shared_experts=0),
    "fine_x4_shared": dict(n_routed_experts=31, moe_intermediate_size=16, num_experts_per_tok=7, n_shared_experts=1),
}
for _arm, _a in ARMS.items():  # the premise of the experiment, checked on import
    _w = _a["moe_intermediate_size"]
    assert (_a["n_routed_experts"] + _a["n_shared_experts"]) * _w == TOTAL_WIDTH, _arm
    assert (_a["num_experts_per_tok"] + _a["n_shared_experts"]) * _w == ACTIVE_WIDTH, _arm

# ModelConfig.tiny fields shared by every arm (the "balance" preset's attention and size).
MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, first_k_dense_replace=0,
             n_group=1, topk_group=1, num_nextn_predict_layers=0)
TRAIN = dict(steps=500, batch_size=16, block_size=64, lr=3e-3, warmup=20, balance="loss_free", gamma=1e-3,
             mtp_lambda=0.0, eval_blocks_per_domain=64, device="cpu")
QUICK_TRAIN = dict(steps=8, batch_size=4, block_size=32, warmup=2, eval_blocks_per_domain=2)


def settings(quick: bool) -> dict[str, Any]:
    return {"model": dict(MODEL), "train": {**TRAIN, **(QUICK_TRAIN if quick else {})},
            "total_expert_width": TOTAL_WIDTH, "active_expert_width": ACTIVE_WIDTH}


# ------------------------------------------------------------------------------ specialization


def _layer_stats(counts: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(I(domain; expert) / H(domain), lift (D, E)) of one layer's counts n[d, i] (D, E)."""
    n = counts.double()
    N = n.sum()
    if N <= 0:
        raise ValueError("no routed tokens: the counts are all zero")
    q = n.sum(1) / N  # (D,) domain shares
    load = n.sum(0)  # (E,) n_i
    joint = n / N  # (D, E)
    expected = q[:, None] * (load / N)[None, :]  # (D, E) what independence predicts
    nz = joint > 0
    mi = float((joint[nz] * (joint[nz] / expected[nz]).log()).sum())
    h = float(-(q[q > 0] * q[q > 0].log()).sum())
    lift = torch.where(load[None, :] > 0, n / (load[None, :] * q[:, None]).clamp(min=1e-12), torch.zeros_like(n))
    return (mi / h if h > 0 else 0.0), lift


def specialization(domain_loads: dict[str, Any]) -> tuple[float, list[list[list[float]]]]:
    """Specialization (see the module docstring) and per-layer lift matrices from ``domain_loads``.

    ``domain_loads``: {domain: (L, E) counts} as ``dsv3_edu.train.evaluate`` returns them. Returns
    (mean over layers of I(domain; expert) / H(domain), lift as L lists of D x E).
    """
    domains = [d for d in DOMAINS if d in domain_loads]
    if len(domains) < 2:
        raise ValueError(f"specialization needs loads of at least two domains, got {list(domain_loads)}")
    counts = torch.stack([torch.as_tensor(domain_loads[d], dtype=torch.float64) for d in domains])  # (D, L, E)
    scores, lifts = [], []
    for layer in range(counts.shape[1]):
        s, lift = _layer_stats(counts[:, layer])
        scores.append(s)
        lifts.append([[round(float(v), 4) for v in row] for row in lift])
    return math.fsum(scores) / len(scores), lifts


# ------------------------------------------------------------------------------------------ run


def _configs(arm: str, seed: int, settings: dict[str, Any]):
    from ..config import ModelConfig
    from ..train import TrainConfig

    model_config = ModelConfig.tiny(**{**settings["model"], **ARMS[arm]})
    return model_config, TrainConfig(**{**settings["train"], "seed": seed})


def run(arm: str, seed: int, settings: dict[str, Any], progress) -> tuple[float, dict[str, Any]]:
    from ..data import BlockDataset
    from ..model import DeepSeekV3
    from ..train import evaluate
    from .runner import train_run

    model_config, train_config = _configs(arm, seed, settings)
    val = BlockDataset("validation", train_config.block_size)
    torch.manual_seed(seed)
    model = DeepSeekV3(model_config)  # the same weights train() would build from this seed
    init = evaluate(model, val, train_config.batch_size, train_config.eval_blocks_per_domain, 0.0)
    spec_init, _ = specialization(init["domain_loads"])
    model, history = train_run(model_config, train_config, progress, model=model, val_data=val)
    final = history[-1]
    spec, lift = specialization(final["domain_loads"])
    expert_params = sum(p.numel() for name, p in model.named_parameters() if "experts" in name)
    active = (ARMS[arm]["num_experts_per_tok"] + ARMS[arm]["n_shared_experts"]) * 3 * model_config.hidden_size \
        * model_config.moe_intermediate_size * model_config.num_hidden_layers
    return final["val_loss"], {
        "specialization": round(spec, 6),
        "specialization_init": round(spec_init, 6),
        "maxvio_global": round(final["maxvio_global"], 6),
        "domain_loss": {d: round(m["loss"], 6) for d, m in final["domains"].items()},
        "lift": lift,
        "domain_loads": {d: [[int(c) for c in layer] for layer in v] for d, v in final["domain_loads"].items()},
        "n_params": {"total": sum(p.numel() for p in model.parameters()), "experts": expert_params,
                     "experts_activated": active},
        "train_loss_last": round(sum(r["main_loss"] for r in history[-20:]) / len(history[-20:]), 6),
    }
