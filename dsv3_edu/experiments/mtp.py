"""Does the MTP loss help or hurt the main model, and how good are the drafts? ([V3] 2.2, eq 25; lessons 07, 09)

    python -m dsv3_edu.experiments mtp [--quick]

Arms: ``lambda0`` (D = 1, lambda = 0: the MTP module is there but never trained; the main model is the
model without MTP, see below), ``lambda0.1`` and ``lambda0.3`` (D = 1), and ``D2_lambda0.3`` (D = 2).
Each trains the same tiny DeepSeek-V3 (``MODEL``: d = 48, 2 layers of which 1 MoE, ~0.1 M parameters)
with ``dsv3_edu.train.train`` on the same batches, steps and schedule; the objective is
L_main + lambda/D sum_k L_MTP^k. All arms with the same seed start from the same main-model weights (those
of the seeded model without MTP, :func:`build_model`); only the MTP modules are new. With lambda = 0 the main
model is therefore exactly the model trained without an MTP module (the MTP loss, multiplied by 0, adds
exact zeros to every gradient; a test checks it), and its untrained module's drafts are a chance baseline.

Metric: the main model's validation loss (``train.evaluate``'s ``val_main_loss``). Extra per seed, from
:func:`dsv3_edu.evaluation.evaluate_same_targets`, for every depth k: the MTP module's loss and accuracy (``mtp_loss``,
``mtp_acc``), and the main model's loss and accuracy *on the same target tokens* (``main_loss_same``,
``main_acc_same``), plus ``agree`` (the draft equals the main model's greedy choice there: the acceptance
rate of greedy speculative decoding on the validation text).

Comparing depth k with the main model: depth k at position i predicts t_{i+k+1} from t_0 .. t_{i+k}, exactly
the tokens the main model has seen at position i+k when it predicts that same token. On the same targets the
two differ only in how those tokens were processed: the k newest tokens reach depth k through MTP blocks
only (the newest through a single block), while the whole chain, main layers then k MTP blocks, is k
transformer layers deeper than the main model. Which effect wins depends on the model and on each depth's
share of the loss (lambda / D); the extra metrics measure it per depth. (Over *all* positions the main model
would also be charged for the first k targets, the hardest, which no depth-k module predicts; hence the
comparison on the same targets.)
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..data import BlockDataset
from ..evaluation import evaluate_same_targets
from ..model import DeepSeekV3
from ..train import TrainConfig
from .runner import train_run

NAME = "mtp"
QUESTION = ("Does training with the MTP loss (lambda in {0.1, 0.3}, depth 1 or 2) change the main model's "
            "validation loss, and how do the MTP depths compare with the main model on the same targets?")
METRIC = "main-model validation loss (next-token cross-entropy, nats/byte)"
HIGHER_IS_BETTER = False
ARMS: dict[str, dict] = {
    "lambda0": {"depth": 1, "mtp_lambda": 0.0},
    "lambda0.1": {"depth": 1, "mtp_lambda": 0.1},
    "lambda0.3": {"depth": 1, "mtp_lambda": 0.3},
    "D2_lambda0.3": {"depth": 2, "mtp_lambda": 0.3},
}

# ModelConfig.tiny overrides (num_nextn_predict_layers comes from the arm).
MODEL = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=96, first_k_dense_replace=1,
    moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
    topk_group=2, max_position_embeddings=128,
)
TRAIN = dict(steps=600, batch_size=16, block_size=64, lr=3e-3, warmup=20, eval_every=0,
             eval_blocks_per_domain=64, balance="loss_free")
QUICK_TRAIN = dict(steps=4, batch_size=2, block_size=16, warmup=1, eval_blocks_per_domain=1)


def same_targets(model: DeepSeekV3, dataset: BlockDataset, batch_size: int, blocks_per_domain: int | None,
                 ) -> dict[str, list[float]]:
    """:func:`dsv3_edu.evaluation.evaluate_same_targets` as lists indexed k-1, under this experiment's
    names: ``mtp_loss``, ``mtp_acc``, ``main_loss_same``, ``main_acc_same``, ``agree``, ``n_targets``."""
    rows = evaluate_same_targets(model, dataset, batch_size, blocks_per_domain)
    names = {"mtp_loss": "mtp_loss", "mtp_acc": "mtp_acc", "main_loss_same": "main_loss",
             "main_acc_same": "main_acc", "agree": "agree", "n_targets": "targets"}
    return {ours: [row[theirs] for row in rows] for ours, theirs in names.items()}


def build_model(depth: int, model: dict, seed: int) -> DeepSeekV3:
    """The seeded model with ``depth`` MTP modules whose main-model weights are those of the seeded model
    without MTP (building the MTP modules draws random numbers, which would otherwise change them)."""
    torch.manual_seed(seed)
    main = DeepSeekV3(ModelConfig.tiny(**{**model, "num_nextn_predict_layers": 0}))
    torch.manual_seed(seed)
    net = DeepSeekV3(ModelConfig.tiny(**{**model, "num_nextn_predict_layers": depth}))
    missing, unexpected = net.load_state_dict(main.state_dict(), strict=False)
    if unexpected or any(not name.startswith("mtp.") for name in missing):
        raise RuntimeError(f"main weights do not match: missing {missing}, unexpected {unexpected}")
    return net


def settings(quick: bool) -> dict:
    return {"model": dict(MODEL), "train": {**TRAIN, **QUICK_TRAIN} if quick else dict(TRAIN)}


def run(arm: str, seed: int, settings: dict, progress=None) -> tuple[float, dict]:
    """Train the arm's model with ``seed`` (init and batches); return (main validation loss, extra)."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    torch.set_num_threads(1)
    depth, lam = ARMS[arm]["depth"], ARMS[arm]["mtp_lambda"]
    net = build_model(depth, settings["model"], seed)
    cfg = TrainConfig(**{**settings["train"], "mtp_lambda": lam, "seed": seed, "device": "cpu"})
    val = BlockDataset("validation", cfg.block_size)
    model, history = train_run(net.config, cfg, progress, model=net, val_data=val)
    final = history[-1]
    same = same_targets(model, val, cfg.batch_size, cfg.eval_blocks_per_domain)
    extra = {
        **same,
        "main_acc": sum(d["acc"] for d in final["domains"].values()) / len(final["domains"]),
        "domains": {d: round(m["loss"], 6) for d, m in final["domains"].items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "main_parameters": sum(p.numel() for name, p in model.named_parameters() if not name.startswith("mtp.")),
    }
    return float(final["val_main_loss"]), extra
