"""The course's one training loop: AdamW, warmup + cosine, MTP loss, load balancing, atomic checkpoints.

    python -m dsv3_edu.train --preset tiny-dsv3 [--steps N] [--out DIR] [--resume] [--seed S] [--device auto]

or from Python (notebooks, benchmarks)::

    model, history = train(model_config, TrainConfig(steps=200, balance="loss_free"), out_dir=None)

One step ([V3] 2.1.2, 2.2; [LF] Alg. 1)::

    loss = L_main + lambda/D sum_k L_MTP^k  (+ alpha sum_i f_i P_i  for "loss_free_seq" or "aux_loss")
    loss.backward(); clip; optimizer.step()
    update_bias(model, gamma)               # "loss_free" and "loss_free_seq" only, after the step

The balancing bias ``e_score_correction_bias`` is a buffer: the optimizer never sees it, so no
weight decay or Adam moment touches it. Balance modes: "none" (nothing), "aux_loss" (the classic
batch-level auxiliary loss, weight ``aux_alpha``), "loss_free" (the bias update alone) and
"loss_free_seq" (the bias update plus [V3]'s complementary sequence-wise loss, ``seq_alpha``).

The data order is a function of (seed, step): step s draws its batch from a generator seeded with
both, so a run resumed from a checkpoint sees exactly the batches it would have seen, and gives the
same losses and weights as a run that was never interrupted.

Data parallel (lesson 11): ``torchrun --standalone --nproc_per_node=2 -m dsv3_edu.train ...`` trains
with ``DistributedDataParallel`` (gloo on CPU, nccl on CUDA). ``batch_size`` stays the *global* batch:
every rank draws the same batch and keeps its own slice, and the expert counts are summed over the
ranks before the bias update (``dsv3_edu.distributed.all_reduce_loads``), so a W-process run ends with
the weights and biases of the 1-process run. Only rank 0 evaluates, writes checkpoints and prints.
("aux_loss" is the exception: its batch-level f_i P_i is computed on each rank's slice, as frameworks do.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .balance import (
    LoadTracker,
    max_violation,
    model_aux_loss,
    model_sequence_balance_loss,
    moe_layers,
    update_bias,
)
from .checkpoint import from_checkpoint_state, read_checkpoint_tensors, save_pretrained, write_temp
from .config import ModelConfig
from .data import DOMAINS, BlockDataset
from .model import DeepSeekV3

BALANCE_MODES = ("none", "aux_loss", "loss_free", "loss_free_seq")
WEIGHTS_FILE = "model.safetensors"  # written by dsv3_edu.checkpoint.save_pretrained, with config.json
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
TRAIN_CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Everything the loop needs besides the model. Presets (``PRESETS``) override a few fields."""

    steps: int = 300  # optimizer steps in the whole run (the schedule spans them)
    batch_size: int = 16  # sequences per step
    block_size: int = 64  # tokens per sequence (T)
    lr: float = 3e-3  # peak learning rate
    warmup: int = 20  # linear warmup steps, from lr/warmup to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # AdamW, matrices only (not norms; the balancing bias is a buffer)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    seed: int = 0  # model init and data order
    balance: str = "loss_free"  # "none" | "aux_loss" | "loss_free" | "loss_free_seq"
    gamma: float = 1e-3  # bias update speed ([V3]: 0.001)
    seq_alpha: float = 1e-4  # sequence-wise balance loss weight ([V3]: 0.0001)
    aux_alpha: float = 1e-2  # auxiliary balance loss weight (Switch Transformer: 0.01)
    mtp_lambda: float = 0.3  # MTP loss weight lambda ([V3]: 0.3, then 0.1)
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    eval_blocks_per_domain: int = 16  # validation blocks per domain in one evaluation
    save_every: int = 0  # checkpoint every N steps when out_dir is set (0: only at the end)
    record_routing: bool = False  # add per-layer expert loads and biases to every history record
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", ...

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("steps", "batch_size", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be a positive integer")
        if self.block_size < 3:
            raise bad("block_size", "needs at least 3 tokens (the MTP loss predicts two ahead)")
        for name in ("warmup", "eval_every", "save_every", "eval_blocks_per_domain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be a non-negative integer")
        if self.balance not in BALANCE_MODES:
            raise bad("balance", f"use one of {', '.join(BALANCE_MODES)}")
        for name in ("lr", "gamma"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in ("weight_decay", "grad_clip", "seq_alpha", "aux_alpha", "mtp_lambda"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise bad("seed", "must be an integer in [0, 2**31)")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# (ModelConfig.tiny overrides, TrainConfig overrides) per preset.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # The shipped tiny DeepSeek-V3 (lesson 09): ~1.3M parameters, every mechanism, MTP depth 1.
    "tiny-dsv3": (
        dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, q_lora_rank=64, kv_lora_rank=32,
             qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, intermediate_size=384,
             first_k_dense_replace=1, moe_intermediate_size=64, n_routed_experts=8, n_shared_experts=1,
             num_experts_per_tok=2, n_group=4, topk_group=2, num_nextn_predict_layers=1),
        # 384-token blocks: speculative decoding runs the model to position ~290 (data/tiny-dsv3/TRAINING.md)
        dict(steps=1200, batch_size=6, block_size=384, lr=3e-3, warmup=50, eval_every=200,
             save_every=200, balance="loss_free_seq"),
    ),
    # The load-balancing experiments of lesson 06 (dsv3_edu.bench.balance): MoE in every layer, no MTP.
    "balance": (
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, first_k_dense_replace=0,
             moe_intermediate_size=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=2,
             n_group=4, topk_group=2, num_nextn_predict_layers=0),
        dict(steps=800, batch_size=16, block_size=64, lr=3e-3, warmup=20, eval_every=0,
             eval_blocks_per_domain=64, record_routing=True),
    ),
    # Seconds: for tests and for trying the command line.
    "smoke": (
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, first_k_dense_replace=1,
             moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
             n_group=2, topk_group=2, num_nextn_predict_layers=1),
        dict(steps=20, batch_size=4, block_size=32, warmup=5, eval_blocks_per_domain=2),
    ),
}


def preset(name: str, **train_overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """(ModelConfig, TrainConfig) of a named preset, with some TrainConfig fields changed."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: choose one of {', '.join(PRESETS)}")
    model_overrides, train_fields = PRESETS[name]
    return ModelConfig.tiny(**model_overrides), TrainConfig(**{**train_fields, **train_overrides})


# ------------------------------------------------------------------------------------- pieces


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - 1 - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * progress))


def batch_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step ``step``'s batch: a function of (seed, step) only, so resuming
    at any step sees the same data as an uninterrupted run. (The CPU generator keeps 32 bits of its
    seed: seed * 1,000,003 + step is distinct for every step below a million and seed below 4294.)"""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**32)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear weights, embeddings, the router) and none on the
    1-D RMSNorm scales. Buffers (the balancing bias, token counts) are not parameters: never here."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def evaluate(
    model: DeepSeekV3, dataset: BlockDataset, batch_size: int = 16, blocks_per_domain: int | None = 16,
    mtp_lambda: float = 0.3,
) -> dict[str, Any]:
    """Validation loss, next-token and MTP-draft accuracy per domain, and global expert loads (eval mode).

    Returns ``val_loss`` (the training objective without balancing terms), ``val_main_loss``,
    ``maxvio_global`` (mean over MoE layers of [LF] eq 4 on the loads of the whole set),
    ``maxvio_global_layers``, ``domain_loads`` {domain: (L, E) lists} and ``domains`` {domain: {loss, acc,
    mtp_acc}}. The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tracker = LoadTracker(model) if moe_layers(model) else None
    sums: dict[str, dict[str, float]] = {}
    try:
        for batch in dataset.eval_batches(batch_size, blocks_per_domain):
            ids = batch.input_ids.to(device)
            out = model(ids)
            if tracker is not None:
                tracker.update(batch.domains)
            main = torch.nn.functional.cross_entropy(
                out.logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none").mean(1)  # (B,)
            correct = (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean(1)  # (B,)
            mtp = [torch.nn.functional.cross_entropy(lg[:, :-1].float().transpose(1, 2), ids[:, k + 1:],
                                                     reduction="none").mean(1)
                   for k, lg in enumerate(out.mtp_logits, 1)]
            mtp_correct = ((out.mtp_logits[0][:, :-1].argmax(-1) == ids[:, 2:]).float().mean(1)
                           if out.mtp_logits else None)
            for i, domain in enumerate(batch.domains):
                s = sums.setdefault(domain, {"n": 0, "loss": 0.0, "acc": 0.0, "mtp_loss": 0.0, "mtp_acc": 0.0})
                s["n"] += 1
                s["loss"] += float(main[i])
                s["acc"] += float(correct[i])
                if mtp:
                    s["mtp_loss"] += sum(float(m[i]) for m in mtp) / len(mtp)
                    s["mtp_acc"] += float(mtp_correct[i])
    finally:
        model.train(was_training)
    n = sum(s["n"] for s in sums.values())
    domains = {d: {k: s[k] / s["n"] for k in ("loss", "acc", "mtp_loss", "mtp_acc")} for d, s in sums.items()}
    main_loss = sum(s["loss"] for s in sums.values()) / n
    mtp_loss = sum(s["mtp_loss"] for s in sums.values()) / n
    D = len(model.mtp)
    result: dict[str, Any] = {
        "val_loss": main_loss + (mtp_lambda * mtp_loss if D else 0.0),
        "val_main_loss": main_loss,
        "val_mtp_loss": mtp_loss if D else None,
        "domains": domains,
    }
    if tracker is not None:
        per_layer = tracker.max_violation()
        result["maxvio_global"] = float(per_layer.mean())
        result["maxvio_global_layers"] = [float(v) for v in per_layer]
        result["domain_loads"] = {d: tracker.domain_loads[d].tolist() for d in DOMAINS if d in tracker.domain_loads}
        result["layer_names"] = tracker.names
    return result


# -------------------------------------------------------------------------------- checkpoints


def weights_digest(model: DeepSeekV3) -> str:
    """SHA-256 of every tensor of ``model.state_dict()`` (names and bytes): ties trainer state to weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    out_dir: str | Path, model: DeepSeekV3, optimizer: torch.optim.Optimizer, step: int,
    history: list[dict[str, Any]], train_config: TrainConfig,
) -> None:
    """Write the weights in the released layout (``dsv3_edu.checkpoint.save_pretrained``: config.json and
    model.safetensors, loadable with ``load_pretrained``), the trainer state (``torch.save`` of plain
    tensors and dicts: optimizer, RNG, step, history) and history.json / train_config.json.

    Every file is first written completely under a temporary name in ``out_dir`` and only then moved into
    place with ``os.replace`` (atomic): an interrupted save leaves the previous checkpoint as it was. The
    trainer state records a digest of the weights, so a pair of files from two different saves is
    detected on load.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "history": history,
        "train_config": dataclasses.asdict(train_config),
        "weights_digest": weights_digest(model),
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    temps: list[tuple[Path, Path]] = []
    try:
        for name, write in (
            (STATE_FILE, lambda p: torch.save(state, p)),
            (HISTORY_FILE, lambda p: p.write_text(json.dumps(history))),
            (TRAIN_CONFIG_FILE, lambda p: p.write_text(json.dumps(dataclasses.asdict(train_config), indent=2) + "\n")),
        ):
            temps.append((write_temp(out / name, write), out / name))
        save_pretrained(model, out)  # weights + config.json, itself staged and moved into place
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in temps:  # the weights are in place: now the state that belongs to them
        os.replace(tmp, final)


def has_checkpoint(out_dir: str | Path) -> bool:
    return (Path(out_dir) / WEIGHTS_FILE).exists() and (Path(out_dir) / STATE_FILE).exists()


def load_checkpoint(out_dir: str | Path, model: DeepSeekV3, optimizer: torch.optim.Optimizer | None = None,
                    ) -> tuple[int, list[dict[str, Any]]]:
    """Load weights (and optimizer state, RNG) saved by :func:`save_checkpoint`; return (step, history)."""
    out = Path(out_dir)
    if not has_checkpoint(out):
        raise FileNotFoundError(f"No checkpoint in {out}: expected {WEIGHTS_FILE} and {STATE_FILE}")
    device = next(model.parameters()).device
    state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
    tensors, _ = from_checkpoint_state(read_checkpoint_tensors(out), model.config,
                                       model.config.num_nextn_predict_layers)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"Checkpoint in {out} does not match the model: missing {missing}, unexpected "
                           f"{unexpected}. Was it written with another config?")
    if weights_digest(model) != state["weights_digest"]:
        raise RuntimeError(f"{WEIGHTS_FILE} in {out} is not the one {STATE_FILE} (step {state['step']}) was saved "
                           "with: the last save was cut between two files. Start again in a new folder.")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    return state["step"], state["history"]


# ---------------------------------------------------------------------------------------- loop


def train(
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    model: DeepSeekV3 | None = None,
    stop_at: int | None = None,
    train_data: BlockDataset | None = None,
    val_data: BlockDataset | None = None,
    sync_loads: bool = True,
) -> tuple[DeepSeekV3, list[dict[str, Any]]]:
    """Train a DeepSeekV3 on the course corpus; return (model, history).

    ``history`` has one record per optimizer step: ``step`` (1-based), ``loss`` (what was
    back-propagated), ``main_loss``, ``mtp_loss`` (mean over depths, None without MTP), ``balance_loss``,
    ``maxvio_batch`` (mean over MoE layers of MaxVio on this step's batch), ``lr``, ``grad_norm``; with
    ``record_routing`` also ``loads`` and ``bias`` (per MoE layer, after the update); at evaluation steps
    the keys of :func:`evaluate`. ``model``: train this model instead of a new one (built with
    ``torch.manual_seed(seed)``). ``out_dir``: write checkpoints there; ``resume``: continue from the one
    there. ``stop_at``: stop after that step, as if interrupted (for tests: resuming must give the same
    run). ``train_data``, ``val_data``: datasets to use instead of the shipped corpus splits (their
    block_size must be the config's). Inside a process group (torchrun, ``distributed.spawn``) it trains
    data-parallel; ``sync_loads=False`` skips the all-reduce of the expert counts (to show the biases drift).
    """
    cfg = train_config or TrainConfig()
    device = resolve_device(cfg.device)
    rank, world = distributed.world()
    distributed.check_global_batch(cfg.batch_size, world)
    if cfg.block_size > model_config.max_position_embeddings:
        raise ValueError(f"block_size={cfg.block_size} is more than max_position_embeddings="
                         f"{model_config.max_position_embeddings}")
    if model is None:
        torch.manual_seed(cfg.seed)
        model = DeepSeekV3(model_config)
    model.to(device).train()
    layers = moe_layers(model)
    if cfg.balance != "none" and not layers:
        raise ValueError(f"balance={cfg.balance!r} needs MoE layers: this config has none "
                         "(first_k_dense_replace >= num_hidden_layers). Use balance='none'.")
    optimizer = make_optimizer(model, cfg)
    # Experts a shard does not reach get no gradient there: find_unused_parameters. The balancing bias is
    # a buffer that each rank updates itself: broadcast_buffers=False (rank 0's would overwrite it).
    net = model
    if world > 1:
        with warnings.catch_warnings():  # torch 2.13 renames broadcast_buffers, keeping this meaning
            warnings.simplefilter("ignore", FutureWarning)
            net = DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=True)
    train_data = train_data or BlockDataset("train", cfg.block_size)
    val_data = val_data or BlockDataset("validation", cfg.block_size)
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if data.block_size != cfg.block_size:
            raise ValueError(f"{name} has block_size {data.block_size}, the TrainConfig {cfg.block_size}")

    step, history = 0, []
    if resume and out_dir is not None and has_checkpoint(out_dir):
        saved = json.loads((Path(out_dir) / CONFIG_FILE).read_text())
        if saved != model_config.to_hf():
            raise ValueError(f"{out_dir} holds a checkpoint of another model config; use another --out")
        step, history = load_checkpoint(out_dir, model, optimizer)
    for moe in layers:
        moe.tokens_per_expert.zero_()
    last = cfg.steps if stop_at is None else min(stop_at, cfg.steps)

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, desc=f"train ({cfg.balance})",
               leave=True)
    while step < last:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train_data.sample(cfg.batch_size, batch_generator(cfg.seed, step))
        ids = distributed.shard_batch(batch.input_ids, rank, world).to(device)  # this rank's slice
        out = net(ids, labels=ids, mtp_lambda=cfg.mtp_lambda)
        balance_loss = torch.zeros((), device=device)
        if cfg.balance == "loss_free_seq":
            balance_loss = model_sequence_balance_loss(model, cfg.seq_alpha)
        elif cfg.balance == "aux_loss":
            balance_loss = model_aux_loss(model, cfg.aux_alpha)
        loss = out.loss + balance_loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else 1e30)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sync_loads:
            distributed.all_reduce_loads(model)  # c_i over the global batch, as V3 counts them
        # Loads c_i of this step's batch, per layer; then the bias update (it resets the counts).
        loads = torch.stack([m.tokens_per_expert.clone() for m in layers]) if layers else None  # (L, E)
        if cfg.balance in ("loss_free", "loss_free_seq"):
            update_bias(model, cfg.gamma)
        else:
            for moe in layers:
                moe.tokens_per_expert.zero_()
        step += 1
        mtp_loss = sum(m.detach() for m in out.mtp_losses) / len(out.mtp_losses) if out.mtp_losses else None
        logged = torch.stack([loss.detach(), out.main_loss.detach(), balance_loss.detach(),
                              mtp_loss if mtp_loss is not None else torch.zeros_like(loss)]).float()
        if world > 1:  # the global batch's losses: the mean over ranks of their shards' means
            dist.all_reduce(logged)
            logged /= world
        record: dict[str, Any] = {
            "step": step, "loss": logged[0].item(), "main_loss": logged[1].item(),
            "mtp_loss": logged[3].item() if mtp_loss is not None else None,
            "balance_loss": logged[2].item(), "lr": lr, "grad_norm": float(grad_norm),
        }
        if loads is not None:
            record["maxvio_batch"] = float(max_violation(loads).mean())
            if cfg.record_routing:
                record["loads"] = loads.tolist()
                record["bias"] = [m.gate.e_score_correction_bias.tolist() for m in layers]
        if rank == 0 and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            record.update(evaluate(model, val_data, cfg.batch_size, cfg.eval_blocks_per_domain, cfg.mtp_lambda))
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", maxvio=f"{record.get('maxvio_batch', 0.0):.2f}", refresh=False)
        if rank == 0 and out_dir is not None and ((cfg.save_every and step % cfg.save_every == 0) or step == last):
            save_checkpoint(out_dir, model, optimizer, step, history, cfg)
    bar.close()
    return model, history


# ----------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-dsv3", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="total optimizer steps (the schedule spans them)")
    parser.add_argument("--out", help="checkpoint folder (weights, trainer state, history.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, ...")
    parser.add_argument("--balance", choices=BALANCE_MODES)
    parser.add_argument("--gamma", type=float, help="bias update speed")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--block-size", type=int, help="tokens per training sequence")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, device=args.device, balance=args.balance,
                                       gamma=args.gamma, lr=args.lr, batch_size=args.batch_size,
                                       block_size=args.block_size).items()
                 if v is not None}
    model_config, train_config = preset(args.preset, **overrides)
    if args.resume and not args.out:
        parser.error("--resume needs --out (the folder that holds the checkpoint)")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes
    try:
        distributed.check_global_batch(train_config.batch_size, world)
    except ValueError as err:
        parser.error(str(err))
    context = distributed.init_from_env(train_config.device)
    start = time.perf_counter()
    try:
        model, history = train(model_config, train_config, out_dir=args.out, progress=not args.no_progress,
                               resume=args.resume)
    finally:
        if context is not None:
            dist.destroy_process_group()
    if context is not None and context.rank != 0:
        return 0  # only rank 0 reports
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {n_params:,} parameters, {train_config.steps} steps, {time.perf_counter() - start:.0f} s")
    final = history[-1] if history else {}
    if "val_loss" in final:
        print(f"val loss {final['val_loss']:.4f} (main {final['val_main_loss']:.4f})"
              + (f", MaxVio_global {final['maxvio_global']:.3f}" if "maxvio_global" in final else ""))
        for domain, m in final["domains"].items():
            mtp = f", MTP draft acc {m['mtp_acc']:.3f}" if final.get("val_mtp_loss") is not None else ""
            print(f"  {domain:10} loss {m['loss']:.3f}, next-token acc {m['acc']:.3f}{mtp}")
    if args.out:
        print(f"checkpoint: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
