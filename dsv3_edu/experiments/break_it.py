"""Break it on purpose: each trap the course's checkers recognise, as one measured effect (lessons 02-08).

Each arm runs the package's correct code and the same code with one small, explicit fault (patched here,
for the duration of the run only; the package itself is never changed), on the same model and data, and
reports the difference. The fault and the effect's unit are in each arm's ``arm_settings``; ``extra``
holds both sides of every comparison.

=========================  ====  ======================================================================
arm                        trap  fault -> effect (the metric)
=========================  ====  ======================================================================
``bias_in_gate_weights``   1     gate weights gathered from s + b instead of s, shipped tiny model ->
                                 validation loss increase (nats per byte)
``group_mask_zero``        2     dropped groups masked with 0.0 instead of -inf, shipped tiny model with
                                 every bias shifted down so that s + b < 0 (a shift that leaves the correct
                                 routing unchanged: checked) -> validation loss increase
``flipped_bias_sign``      4     b_i -= gamma sign(mean c - c_i) during training ("balance" preset, 200
                                 steps) -> global MaxVio increase over the correct update
``mtp_label_leak``         11    MTP depth 1 fed Emb(t_{i+2}), its own target, during training (200 steps)
                                 -> honest validation MTP loss increase over correct training (and the
                                 training loss the leak reports, in extra)
``missing_mscale``         --    a YaRN model trained with V3's rope_scaling (factor 40, mscale_all_dim 1),
                                 evaluated without the mscale^2 = 1.874 in the softmax scale -> validation
                                 loss increase
``half_split_rope``        10    the shipped (interleaved) tiny model run with half-split RoPE ->
                                 validation loss increase
``unverified_drafts``      14    every MTP draft kept without the main model's check, shipped tiny model,
                                 greedy -> fraction of new tokens that differ from greedy decoding
=========================  ====  ======================================================================

Seeds: for the arms that evaluate the shipped model, the seed draws the validation blocks (or prompts);
for the arms that train, it is the training seed. Every run is deterministic.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

NAME = "break_it"
QUESTION = "How much does each trap the checkers recognise actually break, measured on the course's models?"
METRIC = "effect size of the fault (unit per arm, see arm_settings['effect']); larger means more broken"
HIGHER_IS_BETTER = False

ARMS: dict[str, dict[str, Any]] = {
    "bias_in_gate_weights": dict(trap=1, lesson="05", fault="gate weights from s + b instead of s",
                                 effect="validation loss increase of the shipped tiny model, nats per byte"),
    "group_mask_zero": dict(trap=2, lesson="05", fault="dropped groups masked with 0.0 instead of -inf "
                            "(biases shifted so that s + b < 0)",
                            effect="validation loss increase of the shipped tiny model, nats per byte"),
    "flipped_bias_sign": dict(trap=4, lesson="06", fault="b_i -= gamma * sign(mean c - c_i)",
                              effect="global MaxVio after training, faulty minus correct"),
    "mtp_label_leak": dict(trap=11, lesson="07", fault="MTP depth 1 fed its own target Emb(t_{i+2}) in training",
                           effect="honest validation MTP loss, leak-trained minus correctly trained, nats per byte"),
    "missing_mscale": dict(trap=None, lesson="02", fault="softmax scale without YaRN's mscale^2",
                           effect="validation loss increase of a model trained with YaRN, nats per byte"),
    "half_split_rope": dict(trap=10, lesson="02", fault="half-split RoPE on the interleaved checkpoint",
                            effect="validation loss increase of the shipped tiny model, nats per byte"),
    "unverified_drafts": dict(trap=14, lesson="08", fault="MTP drafts kept without verification",
                              effect="fraction of new tokens that differ from greedy decoding"),
}

# Shared by every arm (written to the JSON by the runner).
EVAL = dict(block_size=128, blocks=32, batch_size=8)  # validation sample for the shipped-model arms
TRAIN_STEPS = 200
SMALL_MODEL = dict(  # the trained arms: a small DeepSeek-V3 (0.1M parameters), as in the MTP experiment
    hidden_size=48, num_hidden_layers=2, num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=96, first_k_dense_replace=1,
    moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
    topk_group=2, num_nextn_predict_layers=1, max_position_embeddings=128,
)
YARN = {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096}  # DeepSeek-V3's rope_scaling
DECODE = dict(prompts=3, prompt_tokens=64, new_tokens=48)
QUICK = dict(eval=dict(block_size=32, blocks=4, batch_size=4), train_steps=6, decode=dict(prompts=1,
             prompt_tokens=16, new_tokens=8))


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"eval": QUICK["eval"], "train_steps": QUICK["train_steps"], "decode": QUICK["decode"],
                "small_model": SMALL_MODEL, "yarn": YARN, "checkpoint": "data/tiny-dsv3"}
    return {"eval": EVAL, "train_steps": TRAIN_STEPS, "decode": DECODE, "small_model": SMALL_MODEL,
            "yarn": YARN, "checkpoint": "data/tiny-dsv3"}


# ------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def patched(obj: Any, attr: str, value: Any):
    """Set ``obj.attr = value`` for the duration of the block (the fault), then put the original back."""
    original = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, original)


def _shipped():
    from ..checkpoint import load_pretrained
    from ..config import DATA_DIR

    return load_pretrained(DATA_DIR / "tiny-dsv3")


def _val_sample(seed: int, ev: dict[str, Any]) -> torch.Tensor:
    """``blocks`` validation blocks of ``block_size`` tokens drawn with ``seed`` (B, T)."""
    from ..data import BlockDataset

    data = BlockDataset("validation", ev["block_size"])
    return data.sample(ev["blocks"], torch.Generator().manual_seed(seed)).input_ids


@torch.no_grad()
def _loss(model, ids: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy of the main model over the blocks (eval mode, no MTP)."""
    model.eval()
    total, n = 0.0, 0
    for chunk in ids.split(batch_size):
        logits = model(chunk, mtp=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"))
        n += chunk[:, 1:].numel()
    return total / n


def _faulty_gate_forward(leak_bias: bool = False, zero_mask: bool = False):
    """``Gate.forward`` of dsv3_edu.moe with one fault: the bias in the weights, or a 0.0 group mask."""

    def forward(self, x: torch.Tensor):
        x = x.reshape(-1, self.hidden_size)
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # (N, E)
        biased = scores + self.e_score_correction_bias.float()
        if self.n_group > 1:
            grouped = biased.view(-1, self.n_group, self.n_routed_experts // self.n_group)
            keep = grouped.topk(2, dim=-1).values.sum(-1).topk(self.topk_group, dim=-1).indices  # (N, M)
            group_mask = torch.zeros(grouped.shape[:2], dtype=torch.bool).scatter_(1, keep, True)
            expert_mask = group_mask.repeat_interleave(self.n_routed_experts // self.n_group, dim=1)
            biased = biased.masked_fill(~expert_mask, 0.0 if zero_mask else float("-inf"))  # fault: 0.0
        idx = biased.topk(self.top_k, dim=-1).indices
        weight = (biased if leak_bias else scores).gather(1, idx)  # fault: s + b
        if self.norm_topk_prob:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        return idx, weight * self.routed_scaling_factor, scores

    return forward


def _shift_biases_below_zero(model) -> float:
    """Shift every gate's bias by one constant per layer so that s + b < 0 for every expert; return the
    largest shift. Top-k and the group scores (sums of the top-2) are unchanged by a constant shift."""
    from ..balance import moe_layers

    largest = 0.0
    with torch.no_grad():
        for moe in moe_layers(model):
            b = moe.gate.e_score_correction_bias
            shift = float(b.max()) + 1.0  # s < 1, so s + b - shift < 0
            b.sub_(shift)
            largest = max(largest, shift)
    return largest


def _eval_arm(seed: int, settings: dict[str, Any], fault) -> dict[str, Any]:
    from ..moe import Gate

    ev = settings["eval"]
    model = _shipped()
    ids = _val_sample(seed, ev)
    extra: dict[str, Any] = {}
    if fault == "group_mask_zero":
        before = _loss(model, ids, ev["batch_size"])
        extra["bias_shift"] = round(_shift_biases_below_zero(model), 6)
        correct = _loss(model, ids, ev["batch_size"])
        extra["shift_changes_correct_loss_by"] = abs(correct - before)  # the shift itself is harmless: ~0
        with patched(Gate, "forward", _faulty_gate_forward(zero_mask=True)):
            faulty = _loss(model, ids, ev["batch_size"])
    elif fault == "bias_in_gate_weights":
        correct = _loss(model, ids, ev["batch_size"])
        with patched(Gate, "forward", _faulty_gate_forward(leak_bias=True)):
            faulty = _loss(model, ids, ev["batch_size"])
    elif fault == "half_split_rope":
        correct = _loss(model, ids, ev["batch_size"])
        configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
        with contextlib.ExitStack() as stack:
            for config in configs.values():
                stack.enter_context(patched(config, "rope_interleave", False))
            faulty = _loss(model, ids, ev["batch_size"])
    else:
        raise AssertionError(fault)
    extra.update(loss_correct=round(correct, 6), loss_faulty=round(faulty, 6))
    return {"value": faulty - correct, "extra": extra}


# ------------------------------------------------------------------------------------- trained arms


def _train_small(seed: int, steps: int, progress, **model_overrides):
    from ..config import ModelConfig
    from ..model import DeepSeekV3
    from ..train import TrainConfig
    from .runner import train_run

    model_config = ModelConfig.tiny(**{**SMALL_MODEL, **model_overrides})
    train_config = TrainConfig(steps=steps, batch_size=16, block_size=64, lr=3e-3, warmup=min(20, steps // 2),
                               seed=seed, balance="loss_free", mtp_lambda=0.3, eval_blocks_per_domain=16,
                               device="cpu")
    torch.manual_seed(seed)
    return DeepSeekV3(model_config), model_config, train_config, train_run


def _flipped_update_bias(model, gamma: float = 1e-3, rule: str = "sign"):
    """The bias update with the sign the wrong way round (trap 4): overloaded experts get *more* tokens."""
    from ..balance import moe_layers

    with torch.no_grad():
        for moe in moe_layers(model):
            if moe.training:
                c = moe.tokens_per_expert.double()
                b = moe.gate.e_score_correction_bias
                b.copy_((b.double() - gamma * torch.sign(c.mean() - c)).to(b.dtype))
                moe.tokens_per_expert.zero_()


def _flipped_sign(seed: int, settings: dict[str, Any], progress) -> dict[str, Any]:
    from .. import train as train_module
    from ..config import ModelConfig
    from ..train import PRESETS, TrainConfig
    from .runner import train_run

    steps = settings["train_steps"]
    model_config = ModelConfig.tiny(**PRESETS["balance"][0])
    train_config = TrainConfig(**{**PRESETS["balance"][1], "steps": steps, "warmup": min(20, steps // 2),
                                  "seed": seed, "balance": "loss_free", "record_routing": False,
                                  "eval_blocks_per_domain": settings["eval"]["blocks"], "device": "cpu"})
    half = lambda offset: lambda d, t: progress(offset + d, 2 * t)  # noqa: E731
    _, correct = train_run(model_config, train_config, half(0))
    with patched(train_module, "update_bias", _flipped_update_bias):
        _, faulty = train_run(model_config, train_config, half(steps))
    c, f = correct[-1], faulty[-1]
    return {"value": f["maxvio_global"] - c["maxvio_global"], "extra": {
        "maxvio_correct": round(c["maxvio_global"], 6), "maxvio_faulty": round(f["maxvio_global"], 6),
        "loss_correct": round(c["val_loss"], 6), "loss_faulty": round(f["val_loss"], 6)}}


def _mtp_leak(seed: int, settings: dict[str, Any], progress) -> dict[str, Any]:
    from ..data import BlockDataset
    from ..train import evaluate

    steps = settings["train_steps"]
    runs = {}
    for i, leak in enumerate((False, True)):
        model, model_config, train_config, train_run = _train_small(seed, steps, progress)
        if leak:
            honest = model.mtp_forward

            def leaky(depth, h_prev, next_ids, cache=None, attn_impl=None, honest=honest):
                # fault: position i gets t_{i+k+1}, the very token it must predict (the last one is unscored)
                leaked = torch.cat([next_ids[:, 1:], next_ids[:, -1:]], dim=1)
                return honest(depth, h_prev, leaked, cache=cache, attn_impl=attn_impl)

            model.mtp_forward = leaky  # this instance only
        _, history = train_run(model_config, train_config, lambda d, t, i=i: progress(i * t + d, 2 * t), model=model)
        if leak:
            del model.mtp_forward  # evaluate honestly: the model must draft from what it can see
        val = evaluate(model, BlockDataset("validation", train_config.block_size), train_config.batch_size,
                       train_config.eval_blocks_per_domain, train_config.mtp_lambda)
        tail = history[-20:]
        runs[leak] = {"train_mtp_loss": sum(r["mtp_loss"] for r in tail) / len(tail),
                      "val_mtp_loss": val["val_mtp_loss"],
                      "draft_acc": sum(d["mtp_acc"] for d in val["domains"].values()) / len(val["domains"]),
                      "val_main_loss": val["val_main_loss"]}
    ok, bad = runs[False], runs[True]
    return {"value": bad["val_mtp_loss"] - ok["val_mtp_loss"], "extra": {
        "train_mtp_loss_reported_correct": round(ok["train_mtp_loss"], 6),
        "train_mtp_loss_reported_leak": round(bad["train_mtp_loss"], 6),
        "val_mtp_loss_correct": round(ok["val_mtp_loss"], 6), "val_mtp_loss_leak": round(bad["val_mtp_loss"], 6),
        "draft_acc_correct": round(ok["draft_acc"], 6), "draft_acc_leak": round(bad["draft_acc"], 6),
        "val_main_loss_correct": round(ok["val_main_loss"], 6), "val_main_loss_leak": round(bad["val_main_loss"], 6)}}


def _missing_mscale(seed: int, settings: dict[str, Any], progress) -> dict[str, Any]:
    from ..data import BlockDataset
    from ..rope import yarn_get_mscale
    from ..train import evaluate

    yarn = settings["yarn"]
    model, model_config, train_config, train_run = _train_small(
        seed, settings["train_steps"], progress, rope_scaling=dict(yarn), num_nextn_predict_layers=0,
        max_position_embeddings=int(yarn["factor"] * yarn["original_max_position_embeddings"]))
    train_config = train_config.replace(mtp_lambda=0.0)
    model, _ = train_run(model_config, train_config, progress, model=model)
    val = BlockDataset("validation", train_config.block_size)
    mscale2 = yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"]) ** 2
    correct = evaluate(model, val, train_config.batch_size, train_config.eval_blocks_per_domain, 0.0)["val_loss"]
    attn = [m for m in model.modules() if hasattr(m, "softmax_scale")]
    with contextlib.ExitStack() as stack:
        for m in attn:
            stack.enter_context(patched(m, "softmax_scale", m.softmax_scale / mscale2))  # fault: no mscale^2
        faulty = evaluate(model, val, train_config.batch_size, train_config.eval_blocks_per_domain, 0.0)["val_loss"]
    return {"value": faulty - correct, "extra": {"loss_correct": round(correct, 6), "loss_faulty": round(faulty, 6),
                                                  "mscale_squared": round(mscale2, 6)}}


# ------------------------------------------------------------------------------------ decoding arm


@torch.no_grad()
def _unverified_generate(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding that keeps every MTP draft unchecked (trap 14): each step appends the main model's
    next token x_T and the depth-1 draft of x_{T+1}, without asking the main model about x_{T+1}."""
    out = prompt[0].tolist()
    n = len(out)
    while len(out) - n < new_tokens:
        ids = torch.tensor([out])
        h = model.backbone(ids)  # (1, T, d)
        x_t = int(model.lm_head(h[0, -1]).argmax())
        next_ids = torch.tensor([out[1:] + [x_t]])  # position i is combined with t_{i+1}
        _, logits = model.mtp_forward(1, h, next_ids)
        draft = int(logits[0, -1].argmax())  # depth 1 at the last position: x_{T+1}
        out += [x_t, draft]  # fault: the draft is never verified
    return out[n:n + new_tokens]


def _unverified(seed: int, settings: dict[str, Any], progress) -> dict[str, Any]:
    from ..generate import generate, speculative_generate

    dec = settings["decode"]
    model = _shipped()
    prompts = _val_sample(seed, {"block_size": dec["prompt_tokens"], "blocks": dec["prompts"]})
    differ, first, verified_differ = [], [], []
    for j, prompt in enumerate(prompts):
        prompt = prompt[None]
        greedy = generate(model, prompt, dec["new_tokens"])[0, prompt.shape[1]:].tolist()
        verified = speculative_generate(model, prompt, dec["new_tokens"], return_stats=False)[0, prompt.shape[1]:]
        unverified = _unverified_generate(model, prompt, dec["new_tokens"])
        diff = [a != b for a, b in zip(greedy, unverified)]
        differ.append(sum(diff) / len(diff))
        first.append(diff.index(True) if any(diff) else len(diff))
        verified_differ.append(sum(a != b for a, b in zip(greedy, verified.tolist())) / len(greedy))
        progress(j + 1, len(prompts))
    return {"value": sum(differ) / len(differ), "extra": {
        "differ_per_prompt": [round(d, 6) for d in differ], "first_difference": first,
        "verified_differ": round(sum(verified_differ) / len(verified_differ), 6)}}


# ------------------------------------------------------------------------------------------- run


def run(arm: str, seed: int, settings: dict[str, Any], progress) -> tuple[float, dict[str, Any]]:
    if arm in ("bias_in_gate_weights", "group_mask_zero", "half_split_rope"):
        progress(0, 1)
        result = _eval_arm(seed, settings, arm)
        progress(1, 1)
    elif arm == "flipped_bias_sign":
        result = _flipped_sign(seed, settings, progress)
    elif arm == "mtp_label_leak":
        result = _mtp_leak(seed, settings, progress)
    elif arm == "missing_mscale":
        result = _missing_mscale(seed, settings, progress)
    elif arm == "unverified_drafts":
        result = _unverified(seed, settings, progress)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    if not math.isfinite(result["value"]):
        raise ValueError(f"{arm}: the effect is not finite ({result['value']})")
    return result["value"], {"effect": ARMS[arm]["effect"], **result["extra"]}
