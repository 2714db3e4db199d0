"""Lesson 09 exercises: the latent cache of this model in bytes, the busiest expert of a domain, a top-k
sampling step.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..config import ModelConfig
from ._common import NOT_DONE as _NOT_DONE
from ._common import as_int, as_int_list, checker
from ._common import call_learner as _call

# ----------------------------------------------------------------------------------------------
# Exercise 1: the latent cache in bytes after N tokens
# ----------------------------------------------------------------------------------------------


def solution_cache_bytes(config, n_tokens, dtype):
    """Per token and main layer MLA caches c^KV (d_c values) and k^R (d_h^R values), in ``dtype``.
    generate() runs the main layers only, so the MTP module's layer holds nothing."""
    per_token_layer = config.kv_lora_rank + config.qk_rope_head_dim
    return n_tokens * config.num_hidden_layers * per_token_layer * torch.empty((), dtype=dtype).element_size()


def _cache_cases() -> list[tuple[str, ModelConfig, int, torch.dtype]]:
    from ..train import preset

    tiny, _ = preset("tiny-dsv3")
    return [
        ("tiny-dsv3 after 1,000 tokens, bfloat16", tiny, 1000, torch.bfloat16),
        ("tiny-dsv3 after 100 tokens, float32", tiny, 100, torch.float32),
        ("DeepSeek-V3 after 4,096 tokens, bfloat16", ModelConfig.deepseek_v3(), 4096, torch.bfloat16),
    ]


@checker
def check_cache_bytes(fn) -> None:
    """fn(config, n_tokens, dtype) -> bytes in the latent cache after ``n_tokens`` tokens (prompt + generated)."""
    for where, cfg, n, dtype in _cache_cases():
        want = solution_cache_bytes(cfg, n, dtype)
        got = _call(fn, cfg, n, dtype, hint="config.kv_lora_rank, config.qk_rope_head_dim, "
                    "config.num_hidden_layers; bytes per value: torch.empty((), dtype=dtype).element_size()")
        if got is _NOT_DONE:
            return
        value = as_int(got)
        if value is None:
            print(f"Return one whole number of bytes (an int), not {type(got).__name__} {got!r}.")
            return
        if value == want:
            continue
        L, C, R, H = cfg.num_hidden_layers, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.num_attention_heads
        b = torch.empty((), dtype=dtype).element_size()
        expanded = n * L * H * (cfg.qk_nope_head_dim + R + cfg.v_head_dim) * b
        slips = [
            (n * (L + cfg.num_nextn_predict_layers) * (C + R) * b,
             "you counted the MTP module's layer too. generate() runs the main layers only; the MTP module "
             "caches nothing there (only speculative decoding fills its slot)."),
            (n * L * C * b, "you forgot the rope key k^R: MLA caches the latent c^KV AND the shared rope key, "
                            f"d_c + d_h^R = {C} + {R} values per token and layer."),
            (n * L * R * b, f"you counted only the rope key k^R; add the latent c^KV ({C} values)."),
            (expanded, "that is the EXPANDED cache (per-head keys and values, what MHA would store). MLA stores "
                       "the latent and the rope key only."),
            (n * L * H * (C + R) * b, "you multiplied by the number of heads: the latent and the rope key are "
                                      "shared by all heads, one copy per token and layer."),
            (n * L * (C + R), "that is the number of VALUES; multiply by the bytes per value of the dtype."),
            (n * (C + R) * b, f"that is one layer; every one of the {L} main layers has its own cache."),
            ((n - 1) * L * (C + R) * b, "off by one token: after n tokens, n entries are cached per layer."),
        ]
        for wrong_b in {1, 2, 4} - {b}:
            slips.append((n * L * (C + R) * wrong_b, f"{wrong_b} bytes per value is not {dtype}: it takes {b}. "
                          "Use torch.empty((), dtype=dtype).element_size() (or dtype.itemsize)."))
        for slip, text in slips:
            if value == slip:
                print(f"{where}: expected {want:,} bytes, got {value:,}: {text}")
                return
        print(f"{where}: expected {want:,} bytes = {n:,} tokens x {L} layers x ({C} + {R}) values x {b} bytes, "
              f"got {value:,} ({value / want:.3g} times as much).")
        return
    tiny = _cache_cases()[0]
    print(f"Correct: n x layers x (d_c + d_h^R) x bytes; e.g. {tiny[0]}: "
          f"{solution_cache_bytes(*tiny[1:]):,} bytes.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 2: the busiest expert of a domain, per MoE layer
# ----------------------------------------------------------------------------------------------


def solution_busiest_experts(tracker, domain):
    """For every MoE layer, the expert that received the most tokens of ``domain``: argmax over experts of
    tracker.domain_loads[domain] (L, E)."""
    return tracker.domain_loads[domain].argmax(dim=-1).tolist()


def _fake_tracker() -> SimpleNamespace:
    """Three layers, six experts, three domains; in every layer the busiest expert of "arithmetic" differs
    from the busiest overall, from the least busy, and from the other domains' busiest."""
    arithmetic = torch.tensor([[5, 40, 9, 7, 3, 25], [30, 25, 6, 2, 11, 19], [6, 6, 3, 25, 35, 10]])
    prose = torch.tensor([[0, 2, 7, 36, 1, 20], [1, 20, 28, 4, 9, 2], [4, 3, 8, 22, 1, 30]])
    code = torch.tensor([[3, 1, 38, 9, 2, 20], [2, 20, 1, 3, 25, 6], [30, 1, 2, 20, 4, 5]])
    domain_loads = {"arithmetic": arithmetic.double(), "prose": prose.double(), "code": code.double()}
    return SimpleNamespace(loads=sum(domain_loads.values()), domain_loads=domain_loads,
                           names=["model.layers.1.mlp", "model.layers.2.mlp", "mtp.0.mlp"])


@checker
def check_busiest_experts(fn, tracker=None) -> None:
    """fn(tracker, domain) -> one expert id per MoE layer. Checked on a small made-up tracker; with ``tracker``
    (a real LoadTracker) the answer on it is printed too."""
    fake = _fake_tracker()
    want = solution_busiest_experts(fake, "arithmetic")
    got = _call(fn, fake, "arithmetic", hint="tracker.domain_loads['arithmetic'] is (layers, experts)")
    if got is _NOT_DONE:
        return
    ids = as_int_list(got)
    L, E = fake.loads.shape
    if ids is None:
        if isinstance(got, int) or (isinstance(got, torch.Tensor) and got.numel() == 1):
            print(f"You returned one number; return one expert id per MoE layer ({L} here), e.g. a list.")
        elif isinstance(got, torch.Tensor) and got.is_floating_point():
            print("You returned token counts (floats); return the expert ids: argmax over the expert dim.")
        else:
            print(f"Return a list of {L} expert ids (ints), one per MoE layer; got {type(got).__name__}.")
        return
    if len(ids) == E and L != E:
        print(f"You returned {E} values: one per expert. Return one expert id per MoE layer ({L}): take the "
              "argmax over the LAST dim (experts) of the (layers, experts) loads.")
        return
    if len(ids) != L:
        print(f"Expected {L} expert ids (one per MoE layer), got {len(ids)}.")
        return
    if ids == want:
        print(f"Correct: argmax over experts of domain_loads[domain]; on the made-up tracker {want}.")
        if tracker is not None:
            real = solution_busiest_experts(tracker, "arithmetic")
            print("On the shipped model, arithmetic tokens go most to expert "
                  + ", ".join(f"{e} ({name})" for e, name in zip(real, tracker.names)) + ".")
        return
    if ids == fake.loads.argmax(-1).tolist():
        print(f"Expected {want}, got {ids}: those are the busiest experts over ALL domains (tracker.loads). Use "
              "tracker.domain_loads['arithmetic'].")
    elif ids == fake.domain_loads["arithmetic"].argmin(-1).tolist():
        print(f"Expected {want}, got {ids}: those are the LEAST busy experts (argmin); you want argmax.")
    elif ids == fake.domain_loads["arithmetic"].argmax(0).tolist()[:L]:
        print(f"Expected {want}, got {ids}: you took the argmax over layers (dim 0); take it over experts (dim -1).")
    elif ids == fake.domain_loads["prose"].argmax(-1).tolist():
        print(f"Expected {want}, got {ids}: that is another domain; use the `domain` argument.")
    else:
        print(f"Expected {want}, got {ids}: for each layer (row), the column of the largest count.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 3: one sampling step with temperature and top-k
# ----------------------------------------------------------------------------------------------


def solution_sample(logits, temperature, top_k, generator):
    """logits (B, V) -> next tokens (B,): argmax at temperature 0; else keep the top_k logits of each row,
    divide by the temperature, softmax, draw one token with the generator."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit per row
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _sampling_logits(rows: int = 4000) -> torch.Tensor:
    base = torch.tensor([2.0, 1.5, 1.0, 0.6, 0.2, -0.3, -1.0, 0.9, 1.8, -2.0])  # V = 10, distinct values
    return base.expand(rows, -1).clone()  # (B, V): the same distribution in every row, B draws


def _distribution(tokens: torch.Tensor, V: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V).double() / tokens.numel()


def _top_k_softmax(x: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """softmax over the top_k largest entries of a (V,) vector, zero elsewhere."""
    if top_k is not None:
        x = x.masked_fill(x < x.topk(top_k).values[-1], float("-inf"))
    return x.softmax(-1)


@checker
def check_sample(fn) -> None:
    """fn(logits (B, V), temperature, top_k or None, generator) -> (B,) token ids. Checked on many draws from one
    distribution: greedy at temperature 0, nothing outside the top k, frequencies close to softmax(logits / T)."""
    logits = _sampling_logits()
    B, V = logits.shape
    got = _call(fn, logits.clone(), 0.0, None, torch.Generator().manual_seed(0),
                hint="at temperature 0, return logits.argmax(dim=-1)")
    if got is _NOT_DONE:
        return
    if not isinstance(got, torch.Tensor):
        print(f"Return a tensor of token ids, shape (B,) = ({B},); got {type(got).__name__}.")
        return
    if tuple(got.shape) == (B, 1):
        print(f"Shape ({B}, 1): squeeze the last dim (torch.multinomial returns (B, 1)); expected ({B},).")
        return
    if tuple(got.shape) == (B, V):
        print(f"Shape ({B}, {V}): that looks like probabilities. Draw one token per row (torch.multinomial) "
              "and return the ids, shape (B,).")
        return
    if tuple(got.shape) != (B,) or got.is_floating_point():
        print(f"Expected integer token ids of shape ({B},), got {got.dtype} {tuple(got.shape)}.")
        return
    if not torch.equal(got, logits.argmax(-1)):
        print("temperature 0 must be greedy: every row should be the argmax (token 0 here). Handle it first, "
              "before dividing by the temperature (a division by 0).")
        return
    for temperature, top_k in ((1.0, 3), (0.7, 5), (1.5, None)):
        got = _call(fn, logits.clone(), temperature, top_k, torch.Generator().manual_seed(1))
        if got is _NOT_DONE:
            return
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (B,) or got.is_floating_point():
            print(f"temperature {temperature}, top_k {top_k}: expected ({B},) integer ids, got "
                  f"{type(got).__name__} {tuple(got.shape) if isinstance(got, torch.Tensor) else ''}.")
            return
        case = f"temperature {temperature}, top_k {top_k}"
        freq = _distribution(got, V)
        if top_k is not None:
            allowed = set(logits[0].topk(top_k).indices.tolist())
            drawn = set(got.unique().tolist())
            if drawn - allowed:
                lowest = set(logits[0].topk(top_k, largest=False).indices.tolist())
                if drawn <= lowest:
                    print(f"{case}: you kept the k SMALLEST logits (topk(..., largest=False) or a wrong comparison). "
                          f"Keep the k largest: tokens {sorted(allowed)}.")
                else:
                    print(f"{case}: drew tokens {sorted(drawn - allowed)}, outside the top {top_k} "
                          f"{sorted(allowed)}. Set every logit below the k-th largest to -inf before the softmax.")
                return
        want = _top_k_softmax(logits[0].double() / temperature, top_k)
        if (freq - want).abs().max() <= 0.03:
            continue
        if (freq - _top_k_softmax(logits[0].double() * temperature, top_k)).abs().max() <= 0.03:
            print(f"{case}: your frequencies follow softmax(logits x T): divide the logits by the temperature "
                  "(T < 1 sharpens, T > 1 flattens).")
        elif (freq - _top_k_softmax(logits[0].double(), top_k)).abs().max() <= 0.03:
            print(f"{case}: your frequencies follow softmax(logits): the temperature was not applied.")
        else:
            worst = int((freq - want).abs().argmax())
            print(f"{case}: token {worst} was drawn {freq[worst]:.3f} of the time, softmax(logits / T) over the "
                  f"top k gives it {want[worst]:.3f}. Divide by T, mask all but the top k with -inf, softmax, "
                  "then torch.multinomial(probs, 1, generator=generator).")
        return
    print("Correct: greedy at T = 0; over 4,000 draws nothing fell outside the top k and the frequencies matched "
          "softmax(logits / T) within 0.03. dsv3_edu.generate.sample_next does the same.")
    return
