"""Load balancing without an auxiliary loss: what each method costs in quality and buys in balance (lesson 06).

Every arm trains the "balance" preset of ``dsv3_edu.train`` (2 layers, every FFN an MoE layer with 16
routed experts, top-2 in 2 of 4 groups, 1 shared expert, no MTP) with the same seeds, batches, steps,
schedule and lr; only the balancing differs:

- ``none``: no balancing;
- ``aux_<alpha>``: the classic batch-level auxiliary loss, alpha in {1e-4, 1e-3, 1e-2, 1e-1}
  ([V2] eqs 12-14; [LF] Fig. 1 sweeps the same knob);
- ``loss_free_<gamma>``: V3's bias update b_i += gamma * sign(mean c - c_i), gamma in {1e-4, 1e-3, 1e-2}
  ([LF] Alg. 1, [V3] 2.1.2; ``loss_free`` is gamma = 1e-3, V3's value);
- ``loss_free_seq``: the bias update (gamma = 1e-3) plus V3's sequence-wise loss (alpha = 1e-4, [V3] eqs 17-20);
- ``proportional_<gamma>``: b_i += gamma * (mean c - c_i) / mean c instead of the sign, gamma in
  {1e-3, 1e-2, 1e-1} (the step is a fraction of gamma, so its sweep sits one decade higher; three values,
  as many as the sign rule gets). It answers "why a sign?".

Metric: validation loss (nats per byte). Extra per seed: ``maxvio_global`` (the mean over the MoE layers of
[LF] eq 4 on the expert loads of the whole validation set: 0 is perfect balance, 1 means the busiest
expert gets twice its fair share), ``maxvio_global_layers``, ``maxvio_batch_end`` (MaxVio of the training
batches, mean over the last 50 steps), ``specialization`` (I(domain; expert) / H(domain), see
:mod:`dsv3_edu.experiments.moe_granularity`), ``domain_loss``, ``bias_range`` (max - min of the final
bias per layer). The Pareto picture plots ``maxvio_global`` against the metric, error bars both ways.
"""

from __future__ import annotations

from typing import Any

NAME = "balancing"
QUESTION = ("What does each way of balancing the experts cost in validation loss, and how well does it "
            "balance them (global MaxVio)?")
METRIC = "validation loss (nats per byte)"
HIGHER_IS_BETTER = False

ARMS: dict[str, dict[str, Any]] = {
    "none": dict(balance="none"),
    "aux_1e-4": dict(balance="aux_loss", aux_alpha=1e-4),
    "aux_1e-3": dict(balance="aux_loss", aux_alpha=1e-3),
    "aux_1e-2": dict(balance="aux_loss", aux_alpha=1e-2),
    "aux_1e-1": dict(balance="aux_loss", aux_alpha=1e-1),
    "loss_free_1e-4": dict(balance="loss_free", gamma=1e-4),
    "loss_free": dict(balance="loss_free", gamma=1e-3),
    "loss_free_1e-2": dict(balance="loss_free", gamma=1e-2),
    "loss_free_seq": dict(balance="loss_free_seq", gamma=1e-3, seq_alpha=1e-4),
    "proportional_1e-3": dict(balance="loss_free_proportional", gamma=1e-3),
    "proportional_1e-2": dict(balance="loss_free_proportional", gamma=1e-2),
    "proportional_1e-1": dict(balance="loss_free_proportional", gamma=1e-1),
}
STEPS = 400
QUICK_TRAIN = dict(steps=8, batch_size=4, block_size=32, warmup=2, eval_blocks_per_domain=2)


def settings(quick: bool) -> dict[str, Any]:
    import dataclasses

    from ..train import PRESETS, preset

    overrides = {"steps": STEPS, "device": "cpu", "record_routing": False, **(QUICK_TRAIN if quick else {})}
    _, train_config = preset("balance", **overrides)
    train = dataclasses.asdict(train_config)
    for key in ("seed", "balance", "gamma", "aux_alpha", "seq_alpha"):  # per arm / per seed
        train.pop(key)
    return {"preset": "balance", "model": PRESETS["balance"][0], "train": train}


def run(arm: str, seed: int, settings: dict[str, Any], progress) -> tuple[float, dict[str, Any]]:
    from ..balance import moe_layers
    from ..config import ModelConfig
    from ..train import TrainConfig
    from .moe_granularity import specialization
    from .runner import train_run

    model_config = ModelConfig.tiny(**settings["model"])
    train_config = TrainConfig(**{**settings["train"], **ARMS[arm], "seed": seed})
    model, history = train_run(model_config, train_config, progress)
    final = history[-1]
    spec, _ = specialization(final["domain_loads"])
    tail = history[-50:]
    biases = [m.gate.e_score_correction_bias for m in moe_layers(model)]
    return final["val_loss"], {
        "maxvio_global": round(final["maxvio_global"], 6),
        "maxvio_global_layers": [round(v, 6) for v in final["maxvio_global_layers"]],
        "maxvio_batch_end": round(sum(r["maxvio_batch"] for r in tail) / len(tail), 6),
        "specialization": round(spec, 6),
        "domain_loss": {d: round(m["loss"], 6) for d, m in final["domains"].items()},
        "bias_range": [round(float(b.max() - b.min()), 6) for b in biases],
    }
