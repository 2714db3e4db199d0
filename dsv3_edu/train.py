"""The course's one training loop: AdamW, warmup + cosine, MTP loss, load balancing, atomic checkpoints.

    python -m dsv3_edu.train --preset tiny-dsv3 [--steps N] [--out DIR] [--resume | --overwrite] [--seed S]
                             [--device auto] [--threads N]

or from Python (notebooks, benchmarks)::

    model, history = train(model_config, TrainConfig(steps=200, balance="loss_free"), out_dir=None)

One step ([V3] 2.1.2, 2.2; [LF] Alg. 1)::

    loss = L_main + lambda/D sum_k L_MTP^k  (+ alpha sum_i f_i P_i  for "loss_free_seq" or "aux_loss")
    loss.backward(); clip; optimizer.step()
    update_bias(model, gamma)               # "loss_free" and "loss_free_seq" only, after the step

The balancing bias ``e_score_correction_bias`` is a buffer: the optimizer never sees it, so no
weight decay or Adam moment touches it. Balance modes: "none" (nothing), "aux_loss" (the classic
batch-level auxiliary loss, weight ``aux_alpha``), "loss_free" (the bias update alone) and
"loss_free_seq" (the bias update plus [V3]'s complementary sequence-wise loss, ``seq_alpha``) and
"loss_free_proportional" (a bias step proportional to the load error instead of its sign; lesson 06).

The data order is a function of (seed, step): step s draws its batch from a generator seeded with
both, so a run resumed from a checkpoint sees exactly the batches it would have seen, and gives the
same losses and weights as a run that was never interrupted.

A checkpoint is one folder, ``OUT/checkpoints/step-NNNNNN/`` (weights, config.json, trainer state, history,
train config), written under a temporary name and switched in with one rename: a kill at any instant
leaves the previous checkpoint whole. ``OUT/config.json`` and ``OUT/model.safetensors`` show the newest
one in the released layout (hard links), so ``load_pretrained(OUT)`` reads it.

Data parallel (lesson 11): ``torchrun --standalone --nproc_per_node=2 -m dsv3_edu.train ...`` trains
with ``DistributedDataParallel`` (gloo on CPU, nccl on CUDA). ``batch_size`` stays the *global* batch:
every rank draws the same batch and keeps its own slice, and the expert counts are summed over the
ranks before the bias update (``dsv3_edu.distributed.all_reduce_loads``), so a W-process run ends with
the weights and biases of the 1-process run. Only rank 0 evaluates, writes checkpoints and prints.
("aux_loss" is the exception: its batch-level f_i P_i is computed on each rank's slice, as frameworks do.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
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
    max_violation,
    model_aux_loss,
    model_sequence_balance_loss,
    moe_layers,
    update_bias,
)
from .checkpoint import (
    SAFE_INDEX_NAME,
    SHARD_PATTERN,
    check_fits,
    from_checkpoint_state,
    read_checkpoint_tensors,
    save_pretrained,
)
from .config import FIELD_NAMES, ModelConfig, read_config_json, with_suggestion
from .data import BlockDataset
from .evaluation import evaluate
from .files import ensure_writable, fsync_dir, link_or_copy, remove_stale_temps, remove_tree, write_durably
from .model import DeepSeekV3

BALANCE_MODES = ("none", "aux_loss", "loss_free", "loss_free_seq", "loss_free_proportional")
WEIGHTS_FILE = "model.safetensors"  # written by dsv3_edu.checkpoint.save_pretrained, with config.json
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "history.json"
TRAIN_CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"  # OUT/checkpoints/step-NNNNNN/: one complete checkpoint per folder
PUBLISHED = (WEIGHTS_FILE, HISTORY_FILE, TRAIN_CONFIG_FILE, CONFIG_FILE)  # linked to OUT/ (config.json last)
# TrainConfig fields a resumed run may change freely: they do not touch the weights or the data order.
RESUME_FREE = ("device", "eval_every", "eval_blocks_per_domain", "save_every", "record_routing")


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
    balance: str = "loss_free"  # one of BALANCE_MODES
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
        for name in ("lr", "gamma", "weight_decay", "grad_clip", "seq_alpha", "aux_alpha", "mtp_lambda",
                     "min_lr_ratio", "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, f"must be a number, not {type(value).__name__}")
            if not math.isfinite(value):
                raise bad(name, "must be finite (an infinite or NaN value trains to NaN)")
        for name in ("lr", "gamma"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in ("weight_decay", "grad_clip", "seq_alpha", "aux_alpha", "mtp_lambda"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise bad("seed", "must be an integer in [0, 2**31)")
        if not isinstance(self.record_routing, bool):
            raise bad("record_routing", "must be True or False")
        if not isinstance(self.device, str):
            raise bad("device", 'must be a device name such as "auto", "cpu" or "cuda"')

    def replace(self, **changes: Any) -> TrainConfig:
        _check_train_fields(changes, "TrainConfig.replace")
        return dataclasses.replace(self, **changes)


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_train_fields(changes: dict[str, Any], where: str) -> None:
    unknown = [name for name in changes if name not in TRAIN_FIELDS]
    if unknown:
        names = ", ".join(with_suggestion(n, TRAIN_FIELDS) for n in unknown)
        raise ValueError(f"{where}: no TrainConfig field {names}")


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
    _check_train_fields(train_overrides, f"preset({name!r})")
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


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" (CUDA when available, else CPU) or a device name, checked: an unknown name or a device this
    machine lacks raises ``ValueError`` saying which devices there are, before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device={device!r}: {why}. Use --device cpu (or auto: CUDA when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return dev
    if dev.type == "meta":
        raise ValueError("device='meta' holds no data: training needs a real device (cpu, cuda, mps)")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"device={device!r} is not usable on this machine ({str(err).splitlines()[0][:200]}); "
                         "use --device cpu") from None
    return dev


# -------------------------------------------------------------------------------- checkpoints


def weights_digest(model: DeepSeekV3) -> str:
    """SHA-256 of every tensor of ``model.state_dict()`` (names and bytes): ties trainer state to weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``out_dir``, oldest first. Temporary folders of an
    interrupted save have other names (``.tmp-step-...``) and are never listed."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder of the newest checkpoint in ``out_dir``: ``checkpoints/step-N`` with the largest N, or
    ``out_dir`` itself for a checkpoint written before step folders existed (model.safetensors and
    trainer_state.pt side by side). None when there is none."""
    dirs = checkpoint_dirs(out_dir)
    if dirs:
        return dirs[-1][1]
    out = Path(out_dir)
    return out if (out / WEIGHTS_FILE).exists() and (out / STATE_FILE).exists() else None


def has_checkpoint(out_dir: str | Path) -> bool:
    return latest_checkpoint(out_dir) is not None


def describe_run(out_dir: str | Path) -> str | None:
    """What ``out_dir`` holds that a new run would replace ("a checkpoint at step 200", ...), or None."""
    out = Path(out_dir)
    dirs = checkpoint_dirs(out)
    if dirs:
        return f"a checkpoint at step {dirs[-1][0]}"
    if latest_checkpoint(out) is not None:
        return "a checkpoint (trainer_state.pt)"
    names = (CONFIG_FILE, WEIGHTS_FILE, SAFE_INDEX_NAME, STATE_FILE, HISTORY_FILE)
    found = [name for name in names if (out / name).exists()]
    if found:
        return f"a trained model without trainer state ({', '.join(found)})"
    return None


def remove_run(out_dir: str | Path) -> None:
    """Delete what :func:`describe_run` reports (checkpoints, weights, configs, history), nothing else."""
    out = Path(out_dir)
    if (out / CHECKPOINTS_DIR).is_dir():
        remove_tree(out / CHECKPOINTS_DIR)
    for path in out.iterdir():
        if path.name in (*PUBLISHED, STATE_FILE, SAFE_INDEX_NAME) or SHARD_PATTERN.match(path.name):
            path.unlink()


def _check_finite_weights(model: DeepSeekV3, step: int) -> None:
    """Refuse to save weights that hold NaN or inf (one device sync, at save time only)."""
    floats = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    bad = [name for (name, _), ok in zip(floats, finite) if not ok]
    if bad:
        raise FloatingPointError(
            f"step {step}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}) although the loss was "
            "finite: the last update overflowed. Nothing was saved from this step. Lower the learning rate."
        )


def save_checkpoint(
    out_dir: str | Path, model: DeepSeekV3, optimizer: torch.optim.Optimizer, step: int,
    history: list[dict[str, Any]], train_config: TrainConfig,
) -> Path:
    """Write one complete checkpoint, ``out_dir/checkpoints/step-NNNNNN/``, and return its folder.

    The folder holds the weights in the released layout (``dsv3_edu.checkpoint.save_pretrained``: config.json
    and model.safetensors), the trainer state (``torch.save`` of plain tensors and dicts: optimizer, RNG,
    step, history, and a digest of the weights) and history.json / train_config.json. Every file is written
    and fsynced inside ``.tmp-step-NNNNNN-PID/``; one ``os.rename`` then makes the checkpoint exist, whole
    (a kill before it leaves the previous checkpoint the newest; a kill after it, the new one). Only then are
    ``out_dir/{model.safetensors, config.json, history.json, train_config.json}`` pointed at the new files
    (hard links, each replaced atomically) and the older checkpoint folders removed. Weights holding NaN or
    inf are refused before anything is written.
    """
    out = Path(out_dir)
    root = out / CHECKPOINTS_DIR
    final = root / f"step-{step:06d}"
    if final.exists():
        raise FileExistsError(f"{final} exists already: a checkpoint of step {step} was saved before")
    _check_finite_weights(model, step)
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
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
        save_pretrained(model, tmp)  # config.json + model.safetensors, each fsynced
        write_durably(tmp / STATE_FILE, lambda p: torch.save(state, p))
        write_durably(tmp / HISTORY_FILE, lambda p: p.write_text(json.dumps(history)))
        write_durably(tmp / TRAIN_CONFIG_FILE,
                      lambda p: p.write_text(json.dumps(dataclasses.asdict(train_config), indent=2) + "\n"))
        fsync_dir(tmp)
        os.rename(tmp, final)  # the checkpoint exists from here on, whole
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    fsync_dir(root)  # the rename is on disk before anything older goes
    publish_checkpoint(out, final)
    for _, old in checkpoint_dirs(out):
        if old != final:
            with contextlib.suppress(OSError):  # what is left (.old-step-N-PID) goes at the next start
                remove_tree(old)
    (out / STATE_FILE).unlink(missing_ok=True)  # a trainer state from before step folders, now stale
    return final


def publish_checkpoint(out_dir: str | Path, folder: str | Path) -> None:
    """Point ``out_dir``'s released-layout files at checkpoint ``folder`` (weights first, config.json last),
    so ``load_pretrained(out_dir)`` reads the newest checkpoint."""
    for name in PUBLISHED:
        link_or_copy(Path(folder) / name, Path(out_dir) / name)


def _read_trainer_state(path: Path, device: torch.device) -> dict[str, Any]:
    advice = (f"Restore {path.parent} from a backup, or start the run again (--overwrite, or another --out); "
              "the weights beside it still load with load_pretrained.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the checkpoint cannot be resumed. {advice}") from None
    except Exception as err:  # a truncated zip, a foreign pickle
        raise ValueError(f"Cannot read {path}: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}. "
                         f"The file is damaged or not a trainer state. {advice}") from None
    needed = ("step", "optimizer", "rng", "history", "train_config", "weights_digest")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise ValueError(f"{path} is not a trainer state of dsv3_edu.train (it lacks "
                         f"{[k for k in needed if not isinstance(state, dict) or k not in state]}). {advice}")
    return state


def _changes(saved: dict[str, Any], now: dict[str, Any], skip=()) -> list[str]:
    return [f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(saved) | set(now))
            if key not in skip and saved.get(key) != now.get(key)]


def load_checkpoint(
    out_dir: str | Path, model: DeepSeekV3, optimizer: torch.optim.Optimizer | None = None,
    train_config: TrainConfig | None = None, allow_changes: tuple[str, ...] | list[str] = (),
) -> tuple[int, list[dict[str, Any]]]:
    """Load the newest checkpoint of ``out_dir`` (weights, and optimizer state and RNG); return (step, history).

    The checkpoint must be of the same run: a model config (config.json) or, when ``train_config`` is
    given, a training config (learning rate, batch, seed, steps, ...) other than the saved one is refused,
    naming the fields, unless they are in ``allow_changes``. Files that cannot be read are named.
    """
    out = Path(out_dir)
    folder = latest_checkpoint(out)
    if folder is None:
        raise FileNotFoundError(f"No checkpoint in {out}: expected {CHECKPOINTS_DIR}/step-N/ (or {WEIGHTS_FILE} "
                                f"and {STATE_FILE})")
    device = next(model.parameters()).device
    state = _read_trainer_state(folder / STATE_FILE, device)
    saved_model = read_config_json(folder / CONFIG_FILE)
    changed = _changes(saved_model, model.config.to_hf(), skip=allow_changes)
    if train_config is not None:
        changed += _changes(state["train_config"], dataclasses.asdict(train_config),
                            skip=(*RESUME_FREE, *allow_changes))
    if changed:
        names = [c.split()[0] for c in changed]
        raise ValueError(
            f"Cannot resume the run in {out} (step {state['step']}) with a changed config: {'; '.join(changed)}. "
            "A resumed run continues the same run (the weights, the schedule and the data order depend on these). "
            f"Use the saved values ({folder / TRAIN_CONFIG_FILE}, {folder / CONFIG_FILE}), start a new run "
            f"elsewhere, or accept the change on purpose: allow_changes={tuple(names)} "
            f"(command line: {' '.join('--allow-change ' + n for n in names)})."
        )
    on_disk = read_checkpoint_tensors(folder)
    tensors, _ = from_checkpoint_state(on_disk, model.config, model.config.num_nextn_predict_layers)
    check_fits(folder, model, tensors, on_disk)
    model.load_state_dict(tensors, strict=False)  # strict checks done above, with one clear message
    if weights_digest(model) != state["weights_digest"]:
        raise RuntimeError(f"{WEIGHTS_FILE} in {folder} is not the one {STATE_FILE} (step {state['step']}) was saved "
                           "with: the two files come from different saves. Start again in a new folder.")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    return state["step"], state["history"]


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """Check ``out_dir`` before any work: writable, and holding a run exactly when ``resume`` says so.

    Removes temporaries a killed save left. A folder that holds a run needs ``resume`` (continue it) or
    ``overwrite`` (delete it: done here); ``resume`` on a folder without a checkpoint is refused.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
    if resume and not Path(out_dir).is_dir():
        raise FileNotFoundError(f"Cannot resume from {out_dir}: there is no such folder. Drop resume (--resume) to "
                                "start a new run there.")
    out = ensure_writable(out_dir, is_dir=True, what="checkpoint folder")
    remove_stale_temps(out)
    remove_stale_temps(out / CHECKPOINTS_DIR)
    existing = describe_run(out)
    if resume:
        if not has_checkpoint(out):
            if existing:
                raise FileNotFoundError(
                    f"Cannot resume from {out}: it holds {existing}, not a resumable run (that needs "
                    f"{CHECKPOINTS_DIR}/step-N/ with {STATE_FILE}). Pass overwrite=True (--overwrite) to replace it "
                    "with a new run, or choose another folder."
                )
            raise FileNotFoundError(f"Cannot resume from {out}: it holds no checkpoint. Drop resume (--resume) to "
                                    "start a new run there.")
        folder = latest_checkpoint(out)
        if folder != out:  # finish what a save cut short after its rename: the links, the older folders
            publish_checkpoint(out, folder)
            for _, old in checkpoint_dirs(out)[:-1]:
                remove_tree(old)
    elif existing:
        if not overwrite:
            raise FileExistsError(
                f"{out} holds {existing}. Pass resume=True (--resume) to continue that run, overwrite=True "
                "(--overwrite) to delete and replace it, or choose another folder."
            )
        remove_run(out)
    return out


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
    overwrite: bool = False,
    allow_changes: tuple[str, ...] | list[str] = (),
    sync_loads: bool = True,
) -> tuple[DeepSeekV3, list[dict[str, Any]]]:
    """Train a DeepSeekV3 on the course corpus; return (model, history).

    ``history`` has one record per optimizer step: ``step`` (1-based), ``loss`` (what was
    back-propagated), ``main_loss``, ``mtp_loss`` (mean over depths, None without MTP), ``balance_loss``,
    ``maxvio_batch`` (mean over MoE layers of MaxVio on this step's batch), ``lr``, ``grad_norm``; with
    ``record_routing`` also ``loads`` and ``bias`` (per MoE layer, after the update); at evaluation steps
    the keys of :func:`evaluate`. ``model``: train this model instead of a new one (built with
    ``torch.manual_seed(seed)``). ``out_dir``: write checkpoints there (checked before any work; a folder
    that holds a run needs ``resume`` or ``overwrite``); ``resume``: continue from the newest checkpoint
    there, refused if the model or training config changed, except for the fields in ``allow_changes``;
    ``overwrite``: delete the run there first. ``stop_at``: stop after that step, as if interrupted (for
    tests: resuming must give the same run). ``train_data``, ``val_data``: datasets to use instead of the
    shipped corpus splits (their block_size must be the config's). A non-finite loss or gradient norm
    raises ``FloatingPointError`` naming the step, before anything of that step is saved. Inside a process
    group (torchrun, ``distributed.spawn``) it trains data-parallel; ``sync_loads=False`` skips the
    all-reduce of the expert counts (to show the biases drift).
    """
    cfg = train_config or TrainConfig()
    device = resolve_device(cfg.device)
    rank, world = distributed.world()
    distributed.check_global_batch(cfg.batch_size, world)
    unknown = [n for n in allow_changes if n not in TRAIN_FIELDS and n not in FIELD_NAMES]
    if unknown:
        raise ValueError("allow_changes: no TrainConfig or ModelConfig field "
                         + ", ".join(with_suggestion(n, TRAIN_FIELDS + FIELD_NAMES) for n in unknown))
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the folder that holds the checkpoint)")
    if cfg.block_size > model_config.max_position_embeddings:
        raise ValueError(f"block_size={cfg.block_size} is more than max_position_embeddings="
                         f"{model_config.max_position_embeddings}")
    n_layers = model_config.num_hidden_layers + model_config.num_nextn_predict_layers
    no_moe = ValueError(f"balance={cfg.balance!r} needs MoE layers: this config has none "
                        "(first_k_dense_replace >= num_hidden_layers). Use balance='none'.")
    if cfg.balance != "none" and model is None and not any(model_config.is_moe_layer(i) for i in range(n_layers)):
        raise no_moe
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if data is not None and data.block_size != cfg.block_size:
            raise ValueError(f"{name} has block_size {data.block_size}, the TrainConfig {cfg.block_size}")
    if out_dir is not None:  # before any work: writable, and a run there only with resume or overwrite
        out_dir = distributed.on_main_first(prepare_out_dir, out_dir, resume, overwrite)  # rank 0 alone
    if model is None:
        torch.manual_seed(cfg.seed)
        model = DeepSeekV3(model_config)
    model.to(device).train()
    layers = moe_layers(model)
    if cfg.balance != "none" and not layers:
        raise no_moe
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

    step, history = 0, []
    if resume:
        step, history = load_checkpoint(out_dir, model, optimizer, cfg, allow_changes)
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
        if cfg.balance in ("loss_free", "loss_free_seq", "loss_free_proportional"):
            update_bias(model, cfg.gamma, "proportional" if cfg.balance == "loss_free_proportional" else "sign")
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
        if not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])):  # values read above: no sync
            bar.close()
            saved = checkpoint_dirs(out_dir) if out_dir is not None else []
            raise FloatingPointError(
                f"step {step}: the loss is {record['loss']} and the gradient norm {record['grad_norm']}. Training "
                "stopped; nothing of this step was saved"
                + (f" (the newest checkpoint is step {saved[-1][0]}, in {saved[-1][1]})" if saved else "")
                + f". Usual cause: a learning rate too high for this model (lr={cfg.lr}); try a smaller one."
            )
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


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--steps 0`` or ``--threads 0`` is an error, not a default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number (use 1 or more)")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-dsv3", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=positive_int, help="total optimizer steps (the schedule spans them)")
    parser.add_argument("--out", help="run folder: checkpoints/step-N/ inside, the newest one's weights on top")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in --out and start a new one")
    parser.add_argument("--allow-change", action="append", default=[], metavar="FIELD",
                        help="with --resume: accept this changed config field (e.g. steps, to extend a run)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--balance", choices=BALANCE_MODES)
    parser.add_argument("--gamma", type=positive_float, help="bias update speed")
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--block-size", type=positive_int, help="tokens per training sequence")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out (the folder that holds the checkpoint)")
    if args.overwrite and not args.out:
        parser.error("--overwrite needs --out (the folder whose run it replaces)")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out, --overwrite replaces it: choose one")
    if args.allow_change and not args.resume:
        parser.error("--allow-change only makes sense with --resume")
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, device=args.device, balance=args.balance,
                                       gamma=args.gamma, lr=args.lr, batch_size=args.batch_size,
                                       block_size=args.block_size).items()
                 if v is not None}
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes
    try:
        model_config, train_config = preset(args.preset, **overrides)
        resolve_device(train_config.device)
        distributed.check_global_batch(train_config.batch_size, world)
        if args.out and os.environ.get("RANK", "0") == "0":
            existing = describe_run(args.out) if Path(args.out).is_dir() else None
            if args.overwrite and existing:
                print(f"--overwrite: deleting {existing} in {args.out}, then training from scratch")
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    context = distributed.init_from_env(train_config.device)
    start = time.perf_counter()
    try:
        model, history = train(model_config, train_config, out_dir=args.out, progress=not args.no_progress,
                               resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_change)
    except (ValueError, FileExistsError, FileNotFoundError) as err:  # refused before any training
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except FloatingPointError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
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
        folder = latest_checkpoint(args.out)
        print(f"checkpoint: {folder} (load_pretrained({args.out!r}) reads its weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
