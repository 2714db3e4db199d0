"""When does MTP speculative decoding pay? Acceptance without repetition loops, and speed-up against width
([V3] 5.4.3; lesson 08).

    python -m dsv3_edu.experiments speculative [--quick]

Speculative decoding with the MTP module (``dsv3_edu.generate.speculative_generate``) makes one main-model
forward over two tokens [x_m, draft] plus one MTP-block forward per step, and yields 1 + a tokens per step
at acceptance rate a. Against greedy decoding (one one-token forward per token) the speed-up is

    speed-up(a) = (1 + a) t_1 / (t_2 + t_draft),   break-even at a* = (t_2 + t_draft) / t_1 - 1,

with t_1, t_2 the main model's forward over one and two new tokens (with the cache) and t_draft the MTP
block's (its forward over the accepted positions, one or two). Where decoding is memory-bound (the
weights are read once per forward, whatever the number of tokens), t_2 ~ t_1 and drafting pays; where
it is overhead- or compute-bound, t_2 approaches 2 t_1 and it cannot.

Arms:

- ``tiny_dsv3``: the shipped model (``data/tiny-dsv3``, d = 128, ``dsv3_edu.load_pretrained``). Seed s is a
  prompt set: <bos> + the first 32 bytes of validation documents, the distinct prompts s*P .. s*P+P-1 of
  every domain (P = ``prompts_per_domain``, :func:`prompt_set`; held out: the model never trained on the
  validation split), 256 new tokens.
  Extra: acceptance pooled and split by the position of the drafted token among the new tokens
  (0-31, 32-63, 64+), the fraction of generated tokens that repeat an earlier n-gram (n = 16 bytes: the
  16 tokens ending at it occurred earlier in prompt + output) and the acceptance on drafted tokens that
  are / are not inside such a repeat (so repetition loops cannot inflate the number), the measured
  end-to-end speed-up, and the speed-up the cost formula predicts from this model's own acceptance.
- ``random_d256`` .. ``random_d2048``: random weights (seed s initializes them) of the same shape scaled up
  (:func:`width_config`; d = 128 is exactly the shipped model's shape). Only the step costs are measured
  (random drafts are never accepted). ``random_d2048_dense``: the same with a dense FFN in every main
  layer, to tell an MoE effect (at batch 1 the two tokens of a verification forward may route to
  different experts and read more expert weights) from everything else. Measured (data/experiments/
  speculative.json): the dense model's t_2 / t_1 is as high as the MoE model's (about 2 at d = 2048), so on
  this CPU the cost of the second token comes from the matrix kernel, not from routing: see ``extra.linear``.

Metric (every arm): the speed-up at V3's acceptance a = 0.85 ([V3] 5.4.3: 85-90 % for the second token),
from the measured step costs, in CPU time of this process on one thread (CPU time is what a busy machine
inflates least; wall-clock ratios are kept in extra). Extra: t_1, t_2, t_draft (medians, milliseconds),
the forward cost ratio t_2 / t_1, the draft cost ratio t_draft / t_1, the break-even acceptance.
Everything is measured for both MLA paths: "absorbed" (the value: the decoding path of [V2] 2.1.2) and
"naive" (the path ``python -m dsv3_edu.bench mtp`` reported 1.27x for). ``extra.linear`` (:func:`linear_costs`)
times one weight matrix of the arm's width on one and two tokens: with torch's ``F.linear`` on this CPU
two tokens cost about twice one even for large matrices, while the same product written W @ X^T (W read
once) costs about 1.3x one token at d = 2048; that kernel effect, not the model, sets t_2 / t_1 at large widths.

**Determinism**: this is the one experiment whose values are timings, so they are not bit-reproducible
(expect several percent between runs); it is exempt from the runner's reproduction rule. Its deterministic
parts (acceptance, repetition, identical outputs) are, and a test checks them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import load_pretrained
from ..config import DATA_DIR, ModelConfig
from ..data import DOMAINS, ByteTokenizer, documents, load_corpus
from ..generate import generate, speculative_generate
from ..model import DeepSeekV3

NAME = "speculative"
QUESTION = ("How often are MTP drafts accepted on held-out prompts once repetition is set apart, and from which "
            "model width on does MTP speculative decoding beat greedy decoding in wall-clock time?")
METRIC = "speed-up over greedy decoding at acceptance 0.85, from measured step costs (CPU time, one thread)"
HIGHER_IS_BETTER = True
WIDTHS = (256, 512, 1024, 2048)
ARMS: dict[str, dict] = {"tiny_dsv3": {"model": "data/tiny-dsv3 (trained, d=128)", "hidden_size": 128}}
ARMS.update({f"random_d{d}": {"model": "random weights", "hidden_size": d} for d in WIDTHS})
ARMS["random_d2048_dense"] = {"model": "random weights, dense FFN in every main layer", "hidden_size": 2048,
                              "dense": True}

SHIPPED = DATA_DIR / "tiny-dsv3"
V3_ACCEPTANCE = 0.85
BUCKETS = ((0, 32), (32, 64), (64, None))  # position of the drafted token among the new tokens
NGRAM = 16
ATTN_IMPLS = ("absorbed", "naive")


def width_config(d: int, dense: bool = False) -> ModelConfig:
    """The shipped model's shape at hidden size d: heads of 32 (+16 rope), H = d/32, d_c' = d/2, d_c = d/4,
    dense FFN 3d, 8 routed experts of d/2 (top-2 of 4 groups keeping 2) + 1 shared, 4 layers, MTP depth 1.
    ``dense``: the dense FFN in all 4 main layers (the MTP block stays an MoE layer)."""
    if d % 128:
        raise ValueError(f"hidden size {d}: use a multiple of 128")
    return ModelConfig.tiny(
        hidden_size=d, num_hidden_layers=4, num_attention_heads=d // 32, q_lora_rank=d // 2, kv_lora_rank=d // 4,
        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, intermediate_size=3 * d,
        moe_intermediate_size=d // 2, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=4,
        topk_group=2, num_nextn_predict_layers=1, first_k_dense_replace=4 if dense else 1,
    )


# ------------------------------------------------------------------------------- measurements


def prompt_set(seed: int, per_domain: int, prompt_bytes: int = 32) -> list[tuple[str, torch.Tensor]]:
    """Seed s's prompts: <bos> + the first ``prompt_bytes`` bytes of validation documents, per domain the
    distinct prompts s*P .. s*P+P-1 in document order (templated documents can begin alike; a prompt is
    used once, so seeds never share one)."""
    tok, corpus = ByteTokenizer(), load_corpus("validation")
    out = []
    for domain in DOMAINS:
        distinct: list[list[int]] = []
        for doc in documents(corpus[domain]):
            ids = tok.encode(doc, add_bos=True)[: 1 + prompt_bytes]
            if ids not in distinct:
                distinct.append(ids)
            if len(distinct) == (seed + 1) * per_domain:
                break
        else:
            raise ValueError(f"seed {seed}: the validation split of {domain!r} has too few distinct prompts")
        out += [(domain, torch.tensor([ids])) for ids in distinct[seed * per_domain :]]
    return out


def repeats_ngram(tokens: list[int], start: int, n: int = NGRAM) -> list[bool]:
    """One flag per position j >= start: the n tokens ending at j occurred earlier (ending before j)."""
    seen: set[tuple[int, ...]] = set()
    flags = []
    for j in range(len(tokens)):
        gram = tuple(tokens[j - n + 1 : j + 1]) if j >= n - 1 else None
        if j >= start:
            flags.append(gram is not None and gram in seen)
        if gram is not None:
            seen.add(gram)
    return flags


def acceptance_profile(model: DeepSeekV3, prompts, new_tokens: int) -> dict[str, Any]:
    """Greedy and speculative outputs of every prompt; acceptance by drafted position and by repetition."""
    acc = {b: [0, 0] for b in BUCKETS}
    rep = {True: [0, 0], False: [0, 0]}
    repeated_tokens = generated = 0
    identical = True
    for _, ids in prompts:
        greedy = generate(model, ids, new_tokens)
        spec, stats = speculative_generate(model, ids, new_tokens, trace=True)
        identical &= torch.equal(greedy, spec)
        n_prompt = ids.shape[1]
        tokens = spec[0].tolist()
        is_rep = repeats_ngram(tokens, n_prompt)  # one flag per new token
        repeated_tokens += sum(is_rep)
        generated += len(is_rep)
        for step in stats.trace:
            j = step["position"] + 1 - n_prompt  # the drafted token's index among the new tokens
            if j >= new_tokens:
                continue
            for lo, hi in BUCKETS:
                if j >= lo and (hi is None or j < hi):
                    acc[(lo, hi)][0] += step["accepted"]
                    acc[(lo, hi)][1] += 1
            rep[is_rep[j]][0] += step["accepted"]
            rep[is_rep[j]][1] += 1
    name = {b: f"{b[0]}-{b[1] - 1}" if b[1] else f"{b[0]}+" for b in BUCKETS}
    drafts = sum(n for _, n in acc.values())
    return {
        "identical": identical,
        "acceptance": sum(a for a, _ in acc.values()) / drafts,
        "acceptance_by_position": {name[b]: (a / n if n else None) for b, (a, n) in acc.items()},
        "drafts_by_position": {name[b]: n for b, (_, n) in acc.items()},
        f"repeat_fraction_n{NGRAM}": repeated_tokens / generated,
        "acceptance_in_repeats": rep[True][0] / rep[True][1] if rep[True][1] else None,
        "acceptance_outside_repeats": rep[False][0] / rep[False][1] if rep[False][1] else None,
        "drafts_in_repeats": rep[True][1],
        "drafts_outside_repeats": rep[False][1],
    }


def _cpu_ms(fn: Callable[[], Any]) -> float:
    t0 = time.process_time()
    fn()
    return 1000 * (time.process_time() - t0)


@torch.no_grad()
def step_costs(model: DeepSeekV3, context: torch.Tensor, repeats: int, attn_impl: str) -> dict[str, float]:
    """Median CPU milliseconds of the pieces of one decoding step, after ``context`` (1, P) is cached.

    ``t1``: the greedy step (main forward over one new token + head); ``t2``: the verification forward over
    [x_m, draft]; ``t_draft1`` / ``t_draft2``: the MTP block over one / two positions (rejected / accepted
    previous draft). The cache is restored after every call, so each call sees the same P cached tokens.
    """
    model.eval()
    cache = model.new_cache()
    h = model.backbone(context, cache=cache, attn_impl=attn_impl)  # main layers: P positions
    model.mtp_forward(1, h[:, :-1], context[:, 1:], cache=cache, attn_impl=attn_impl)  # MTP layer: P-1
    saved = list(cache.layers)

    def reset():
        cache.layers = list(saved)

    one, two = context[:, -1:], context[:, -2:]

    def main(ids):
        return lambda: model.lm_head(model.backbone(ids, cache=cache, attn_impl=attn_impl)[0]).argmax(-1)

    def draft(n):
        return lambda: model.mtp_forward(1, h[:, -n:], context[:, -n:], cache=cache, attn_impl=attn_impl)[1][
            0, -1].argmax()

    pieces = {"t1": main(one), "t2": main(two), "t_draft1": draft(1), "t_draft2": draft(2)}
    for fn in pieces.values():  # warm-up
        fn()
        reset()
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(repeats):  # interleaved, so a slow spell of the machine hits every piece alike
        for k, fn in pieces.items():
            times[k].append(_cpu_ms(fn))
            reset()
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def linear_costs(d: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Why t_2 / t_1 is not ~1 on a CPU even where the weights dominate: one (3d, d) matrix (the dense FFN's
    up projection) applied to one and to two token vectors, median CPU milliseconds. ``linear1`` /
    ``linear2``: ``F.linear`` as the model calls it; ``stream2``: the same product as W @ X^T, which reads
    W once for both tokens (what a memory-bound decode kernel does)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3 * d, d, generator=gen)
    x1, x2 = torch.randn(1, 1, d, generator=gen), torch.randn(1, 2, d, generator=gen)
    pieces = {"linear1": lambda: F.linear(x1, w), "linear2": lambda: F.linear(x2, w), "stream2": lambda: w @ x2[0].T}
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(repeats):
        for k, fn in pieces.items():
            times[k].append(_cpu_ms(fn))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["ratio_linear"] = out["linear2"] / out["linear1"]
    out["ratio_stream"] = out["stream2"] / out["linear1"]
    return out


def predicted_speedup(costs: dict[str, float], a: float) -> float:
    """(1 + a) t1 / (t2 + a t_draft2 + (1 - a) t_draft1): tokens per step over the step's cost in greedy steps."""
    return (1 + a) * costs["t1"] / (costs["t2"] + a * costs["t_draft2"] + (1 - a) * costs["t_draft1"])


def cost_summary(costs: dict[str, float]) -> dict[str, float]:
    spec_step = costs["t2"] + V3_ACCEPTANCE * costs["t_draft2"] + (1 - V3_ACCEPTANCE) * costs["t_draft1"]
    return {
        **{k: round(v, 4) for k, v in costs.items()},
        "forward_ratio": costs["t2"] / costs["t1"],
        "draft_ratio": costs["t_draft1"] / costs["t1"],
        "step_ratio": spec_step / costs["t1"],
        "break_even_acceptance": spec_step / costs["t1"] - 1,
        "speedup_at_0.85": predicted_speedup(costs, V3_ACCEPTANCE),
    }


def end_to_end(model: DeepSeekV3, prompts, new_tokens: int, attn_impl: str) -> dict[str, float]:
    """Greedy / speculative time per prompt (one run each, CPU and wall), median ratio over prompts."""
    cpu, wall = [], []
    for _, ids in prompts:
        best: dict[str, tuple[float, float]] = {}
        for name, fn in (("greedy", generate), ("spec", speculative_generate)):
            c0, w0 = time.process_time(), time.perf_counter()
            fn(model, ids, new_tokens, attn_impl=attn_impl)
            best[name] = (time.process_time() - c0, time.perf_counter() - w0)
        cpu.append(best["greedy"][0] / best["spec"][0])
        wall.append(best["greedy"][1] / best["spec"][1])
    return {"speedup_cpu": statistics.median(cpu), "speedup_wall": statistics.median(wall)}


# -------------------------------------------------------------------------------- the interface


def settings(quick: bool) -> dict:
    """``hidden_sizes``: the width each arm is measured at (``--quick``: d = 128 for every random arm, and no
    end-to-end timing: seconds, for tests)."""
    common = {"attn_impls": list(ATTN_IMPLS), "ngram": NGRAM, "v3_acceptance": V3_ACCEPTANCE, "threads": 1}
    if quick:
        return {**common, "prompts_per_domain": 1, "new_tokens": 40, "cost_repeats": 2, "context_tokens": 48,
                "end_to_end": False, "hidden_sizes": {arm: 128 for arm in ARMS}}
    return {**common, "prompts_per_domain": 3, "new_tokens": 256, "cost_repeats": 30, "context_tokens": 160,
            "end_to_end": True, "hidden_sizes": {arm: spec["hidden_size"] for arm, spec in ARMS.items()}}


def run(arm: str, seed: int, settings: dict, progress=None) -> tuple[float, dict]:
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    torch.set_num_threads(1)
    d = settings["hidden_sizes"][arm]
    timed = arm == "tiny_dsv3" and settings["end_to_end"]
    total = 1 + len(settings["attn_impls"]) * (2 if timed else 1)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    extra: dict[str, Any] = {}
    if arm == "tiny_dsv3":
        model = load_pretrained(SHIPPED).eval()
        prompts = prompt_set(seed, settings["prompts_per_domain"])
        extra.update(acceptance_profile(model, prompts, settings["new_tokens"]))
        # real text as the cached context: the generated continuation of the first prompt
        context = generate(model, prompts[0][1], settings["context_tokens"] - prompts[0][1].shape[1])
    else:
        torch.manual_seed(seed)
        model = DeepSeekV3(width_config(d, ARMS[arm].get("dense", False))).eval()
        gen = torch.Generator().manual_seed(seed)
        context = torch.randint(model.config.vocab_size, (1, settings["context_tokens"]), generator=gen)
    tick()
    extra["parameters"] = sum(p.numel() for p in model.parameters())
    extra["linear"] = linear_costs(model.config.hidden_size, settings["cost_repeats"], seed)
    for impl in settings["attn_impls"]:
        costs = cost_summary(step_costs(model, context, settings["cost_repeats"], impl))
        extra[impl] = costs
        tick()
        if timed:
            costs.update(end_to_end(model, prompts, settings["new_tokens"], impl))
            tick()
        if arm == "tiny_dsv3":
            costs["predicted_speedup_own_acceptance"] = predicted_speedup(
                {k: costs[k] for k in ("t1", "t2", "t_draft1", "t_draft2")}, extra["acceptance"])
    return float(extra["absorbed" if "absorbed" in extra else settings["attn_impls"][0]]["speedup_at_0.85"]), extra
