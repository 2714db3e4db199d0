"""What the MTP loss weight lambda does, measured on tiny models ([V3] 2.2, eq 25; lesson 07).

    python -m dsv3_edu.experiments.mtp_lambda [--quick] [--out DIR] [--steps N] [--seeds 0 1]

Trains one tiny DeepSeek-V3 (``MODEL``: d=48, 2 layers, MoE, about 0.1M parameters) with
``dsv3_edu.train.train`` for each setting:

- MTP depth D=1 with lambda in {0, 0.1, 0.3, 1.0}, for every seed (default 0 and 1: the spread between
  seeds says which differences are noise);
- D=2 with lambda=0.3, first seed only.

Runs with the same seed and D start from the same weights, and all runs with the same seed see the same
batches (``dsv3_edu.train`` draws step s's batch from (seed, s)).
The objective is L_main + lambda/D sum_k L_MTP^k; lambda=0 keeps the MTP modules but never trains them.

Written to ``--out`` (default ``data/mtp_lambda/``):

- ``results.json``: per run, the final validation metrics of :func:`evaluate_mtp` (main loss and
  accuracy; per depth the MTP loss, the draft accuracy and the agreement with the main model; per
  domain), the training curves (main and mean MTP loss per step) and validation curves (every 50 steps);
- ``model_D2_lambda0.3/``: the D=2, lambda=0.3 model of the first seed (``dsv3_edu.load_pretrained``
  reads it), so lesson 07 can show trained predictions of both depths without training.

About 3 minutes on one CPU thread. ``--quick``: lambda in {0, 0.3}, one seed and the D=2 run, a few
steps each (seconds; for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_pretrained
from ..config import DATA_DIR, ModelConfig
from ..data import BlockDataset
from ..evaluation import evaluate_mtp  # noqa: F401  (lesson 07 and older callers import it from here)
from ..model import DeepSeekV3
from ..train import TrainConfig, train

OUT_DIR = DATA_DIR / "mtp_lambda"
RESULTS_FILE = "results.json"
LAMBDAS = (0.0, 0.1, 0.3, 1.0)
SEEDS = (0, 1)
DEPTH2_LAMBDA = 0.3

# ModelConfig.tiny overrides: small enough for ~300 steps in about 20 s on one thread.
MODEL = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=96, first_k_dense_replace=1,
    moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
    topk_group=2, num_nextn_predict_layers=1, max_position_embeddings=128,
)
TRAIN = dict(steps=300, batch_size=16, block_size=64, lr=3e-3, warmup=20, eval_every=50,
             eval_blocks_per_domain=16, balance="loss_free")
QUICK = dict(steps=6, batch_size=4, block_size=32, warmup=2, eval_every=3, eval_blocks_per_domain=2)


def model_dir_name(depth: int, mtp_lambda: float) -> str:
    return f"model_D{depth}_lambda{mtp_lambda:g}"


# ------------------------------------------------------------------------------------ evaluation


# ------------------------------------------------------------------------------------------- runs


def run_one(depth: int, mtp_lambda: float, seed: int, train_overrides: dict[str, Any]) -> tuple[DeepSeekV3, dict]:
    """Train one model; return it and its record for results.json."""
    model_config = ModelConfig.tiny(**{**MODEL, "num_nextn_predict_layers": depth})
    train_config = TrainConfig(**{**TRAIN, **train_overrides, "mtp_lambda": mtp_lambda, "seed": seed})
    start = time.perf_counter()
    model, history = train(model_config, train_config, progress=False)
    seconds = time.perf_counter() - start
    val = BlockDataset("validation", train_config.block_size)
    final = evaluate_mtp(model, val, train_config.batch_size, train_config.eval_blocks_per_domain)
    evals = [r for r in history if "val_main_loss" in r]
    record = {
        "name": f"D{depth}_lambda{mtp_lambda:g}_seed{seed}",
        "depth": depth, "mtp_lambda": mtp_lambda, "seed": seed,
        "final": final,
        "curve": {  # training batches, every step
            "step": [r["step"] for r in history],
            "main_loss": [round(r["main_loss"], 5) for r in history],
            "mtp_loss": [round(r["mtp_loss"], 5) for r in history],  # mean over depths
        },
        "val_curve": {  # validation, every eval_every steps and at the end
            "step": [r["step"] for r in evals],
            "main_loss": [round(r["val_main_loss"], 5) for r in evals],
            "mtp_loss": [round(r["val_mtp_loss"], 5) for r in evals],
        },
        "seconds": round(seconds, 1),
    }
    return model, record


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (depth, lambda): the mean over seeds of the final metrics, and the min-max spread."""
    rows = []
    for depth, lam in sorted({(r["depth"], r["mtp_lambda"]) for r in runs}):
        group = [r["final"] for r in runs if r["depth"] == depth and r["mtp_lambda"] == lam]
        row: dict[str, Any] = {"depth": depth, "mtp_lambda": lam, "seeds": len(group)}
        for key in ("main_loss", "main_acc"):
            values = [g[key] for g in group]
            row[key] = sum(values) / len(values)
            row[f"{key}_spread"] = max(values) - min(values)
        for key in ("mtp_loss", "mtp_acc", "agree"):
            row[key] = [sum(g[key][k] for g in group) / len(group) for k in range(depth)]
        rows.append(row)
    return rows


def run_experiment(
    out_dir: str | Path = OUT_DIR, quick: bool = False, steps: int | None = None,
    seeds: tuple[int, ...] = SEEDS, lambdas: tuple[float, ...] = LAMBDAS, progress: bool = True,
) -> dict[str, Any]:
    """Train every setting, write results.json and the D=2 model to ``out_dir``; return the results."""
    torch.set_num_threads(1)
    overrides: dict[str, Any] = dict(QUICK) if quick else {}
    if quick:  # a smoke test: two lambdas, one seed, and the D=2 run
        lambdas, seeds = (0.0, DEPTH2_LAMBDA), seeds[:1]
    if steps is not None:
        overrides["steps"] = steps
    settings = [(1, lam, seed) for seed in seeds for lam in lambdas] + [(2, DEPTH2_LAMBDA, seeds[0])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for depth, lam, seed in settings:
        model, record = run_one(depth, lam, seed, overrides)
        runs.append(record)
        if progress:
            f = record["final"]
            print(f"{record['name']:>24}: main val loss {f['main_loss']:.4f}, MTP val loss "
                  + ", ".join(f"{v:.4f}" for v in f["mtp_loss"]) + ", draft acc "
                  + ", ".join(f"{v:.3f}" for v in f["mtp_acc"]) + f"  ({record['seconds']:.0f} s)", flush=True)
        if depth == 2 and seed == seeds[0]:
            save_pretrained(model, out / model_dir_name(depth, lam))
    train_config = TrainConfig(**{**TRAIN, **overrides})
    results = {
        "description": "Tiny DeepSeek-V3 trained with L = L_main + lambda/D sum_k L_MTP^k for several lambda "
                       "and D; validation metrics from dsv3_edu.experiments.mtp_lambda.evaluate_mtp.",
        "command": "python -m dsv3_edu.experiments.mtp_lambda" + (" --quick" if quick else ""),
        "quick": quick,
        "model_config": {**MODEL, "num_nextn_predict_layers": "depth of each run"},
        "train_config": {k: v for k, v in dataclasses.asdict(train_config).items() if k not in ("mtp_lambda", "seed")},
        "n_parameters": {
            f"D{d}": sum(p.numel() for p in DeepSeekV3(ModelConfig.tiny(**{**MODEL, "num_nextn_predict_layers": d}))
                         .parameters())
            for d in (1, 2)
        },
        "lambdas": list(lambdas), "seeds": list(seeds), "depth2_lambda": DEPTH2_LAMBDA,
        "summary": summarize(runs),
        "runs": runs,
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    return results


def load_results(path: str | Path = OUT_DIR / RESULTS_FILE) -> dict[str, Any]:
    """The results.json a previous run wrote (the shipped one by default)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m dsv3_edu.experiments.mtp_lambda` first")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.experiments.mtp_lambda",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT_DIR), help=f"output folder (default: {OUT_DIR})")
    parser.add_argument("--quick", action="store_true", help="a few steps on small batches (a smoke test)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds of the D=1 runs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run_experiment(args.out, quick=args.quick, steps=args.steps, seeds=tuple(args.seeds))
    print(f"{len(results['runs'])} runs in {time.perf_counter() - start:.0f} s -> {Path(args.out) / RESULTS_FILE}")
    for row in results["summary"]:
        print(f"D={row['depth']} lambda={row['mtp_lambda']:<4g} main val loss {row['main_loss']:.4f} "
              f"(spread {row['main_loss_spread']:.4f}), draft acc "
              + ", ".join(f"{v:.3f}" for v in row["mtp_acc"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
