"""Lesson 10 exercises: count one MLA layer, name the checkpoint's tensors, GPUs for the weights, max context.

Each ``check_xxx(answer)`` tries your function (or dict) on a few cases and prints what is wrong, or
"Correct: ...". It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import math

from ..accounting import count_parameters
from ..config import ModelConfig
from ._common import checker, diagnose, run_cases, same_number

GiB = 2**30




# ----------------------------------------------------------------------------------------------
# Exercise 1: the parameters of one MLA layer, from the config
# ----------------------------------------------------------------------------------------------


def solution_mla_layer_parameters(config):
    """q_a_proj, q_a_layernorm, q_b_proj (or one q_proj), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj."""
    d, H = config.hidden_size, config.num_attention_heads
    C, R = config.kv_lora_rank, config.qk_rope_head_dim
    D, V = config.qk_nope_head_dim, config.v_head_dim
    if config.q_lora_rank is None:
        query = d * H * (D + R)  # q_proj: [W^UQ; W^QR] straight from h
    else:
        Q = config.q_lora_rank
        query = d * Q + Q + Q * H * (D + R)  # W^DQ, RMSNorm(c^Q), [W^UQ; W^QR]
    kv = d * (C + R) + C + C * H * (D + V)  # [W^DKV; W^KR], RMSNorm(c^KV), [W^UK; W^UV]
    return query + kv + H * V * d  # + W^O


_MLA_CASES = (
    (ModelConfig.deepseek_v3(),),
    (ModelConfig.tiny(qk_nope_head_dim=12, v_head_dim=20, qk_rope_head_dim=6, kv_lora_rank=24, q_lora_rank=40),),
    (ModelConfig.tiny(q_lora_rank=None),),
)


def _q_rank(c) -> int:
    return c.q_lora_rank or 0


_MLA_MISTAKES = (
    (lambda c: solution_mla_layer_parameters(c) - _q_rank(c) - c.kv_lora_rank,
     "you left out the two RMSNorm weights (q_a_layernorm: d_c' values, kv_a_layernorm: d_c values). Small, "
     "but they are parameters and the checkpoint stores them"),
    (lambda c: solution_mla_layer_parameters(c) - c.hidden_size * c.qk_rope_head_dim,
     "kv_a_proj_with_mqa outputs d_c + d_h^R values: its last d_h^R rows are W^KR, the one rope key k^R "
     "computed from h ([V3] eq 3)"),
    (lambda c: solution_mla_layer_parameters(c) + c.hidden_size * (c.num_attention_heads - 1) * c.qk_rope_head_dim,
     "you gave every head its own rope key: k^R is ONE key shared by all heads (the 'with_mqa' in the name)"),
    (lambda c: solution_mla_layer_parameters(c) + c.kv_lora_rank * c.num_attention_heads * c.qk_rope_head_dim,
     "kv_b_proj outputs per head k_nope (qk_nope_head_dim) and v (v_head_dim): the rope part of the key does "
     "not come from the latent c^KV"),
    (lambda c: solution_mla_layer_parameters(c)
     - (c.q_lora_rank or c.hidden_size) * c.num_attention_heads * c.qk_rope_head_dim,
     "the query projection outputs per head [q_nope (d_h); q_rope (d_h^R)]: the query's rope part comes from "
     "the query latent c^Q (W^QR), so q_b_proj has n_h (d_h + d_h^R) rows"),
    (lambda c: solution_mla_layer_parameters(c) + c.num_attention_heads * c.qk_rope_head_dim * c.hidden_size,
     "o_proj reads the heads' outputs, n_h x v_head_dim values, not n_h x (d_h + d_h^R)"),
    (lambda c: solution_mla_layer_parameters(c) - c.num_attention_heads * c.v_head_dim * c.hidden_size,
     "you forgot o_proj (W^O, n_h d_h -> d), the largest matrix of an MLA layer at full scale"),
    (lambda c: solution_mla_layer_parameters(c) + c.hidden_size * c.kv_lora_rank + c.kv_lora_rank,
     "you gave K and V a latent each: they share ONE latent c^KV (one kv_a_proj_with_mqa, one kv_a_layernorm)"),
    (lambda c: solution_mla_layer_parameters(c) + _q_rank(c) + c.num_attention_heads * c.qk_head_dim
     + c.kv_lora_rank + c.qk_rope_head_dim + c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim)
     + c.hidden_size,
     "you added a bias to each projection: DeepSeek-V3's projections have none (attention_bias false)"),
)


@checker
def check_mla_layer_parameters(fn) -> None:
    """fn(config) -> the number of parameters of one MLA layer (attention only, without the block's norms)."""
    hint = "with q_lora_rank None there is one q_proj (d -> n_h (d_h + d_h^R)) and no q_a_layernorm."
    results = run_cases(fn, _MLA_CASES, solution_mla_layer_parameters, hint=hint)
    if results is None:
        return
    wrong = [r for r in results if not same_number(r[1], r[2])]
    if not wrong:
        print(f"Correct: {results[0][2]:,} parameters per MLA layer of DeepSeek-V3; x 61 layers = "
              f"{61 * results[0][2]:,}, the 'attention' line of count_parameters.")
        return
    (config,), got, want = wrong[0]
    print(f"For hidden_size={config.hidden_size}, heads={config.num_attention_heads}, "
          f"q_lora_rank={config.q_lora_rank}, kv_lora_rank={config.kv_lora_rank}, "
          f"qk_nope/rope/v = {config.qk_nope_head_dim}/{config.qk_rope_head_dim}/{config.v_head_dim}: "
          f"expected {want:,}, got {got:,}.")
    reason = diagnose(results, _MLA_MISTAKES)
    recipe = ("add up seven tensors: q_a_proj (d x d_c'), q_a_layernorm (d_c'), q_b_proj (d_c' x n_h (d_h + d_h^R)), "
              "kv_a_proj_with_mqa (d x (d_c + d_h^R)), kv_a_layernorm (d_c), kv_b_proj (d_c x n_h (qk_nope_head_dim "
              "+ v_head_dim)), o_proj (n_h v_head_dim x d)")
    print("Hint: " + (reason or recipe) + ".")


# ----------------------------------------------------------------------------------------------
# Exercise 2: checkpoint names -> paper symbols
# ----------------------------------------------------------------------------------------------

SYMBOL_MENU = {
    "W^DQ": "query down-projection h -> c^Q",
    "W^UQ": "query up-projection c^Q -> q^C (no rope part)",
    "W^UQ;W^QR": "query up-projection c^Q -> [q^C; q^R] per head",
    "W^DKV": "KV down-projection h -> c^KV (latent only)",
    "W^KR": "rope key projection h -> k^R",
    "W^DKV;W^KR": "h -> [c^KV; k^R], stacked",
    "W^UK": "key up-projection c^KV -> k^C",
    "W^UV": "value up-projection c^KV -> v^C",
    "W^UK;W^UV": "c^KV -> [k^C; v^C] per head, stacked",
    "W^O": "output projection of attention",
    "RMSNorm(c^Q)": "the norm of the query latent",
    "RMSNorm(c^KV)": "the norm of the KV latent",
    "e_i": "expert centroids of the router, s_i = sigmoid(u^T e_i)",
    "b_i": "balancing bias, used to select experts only",
    "M_k": "MTP projection of [RMSNorm(Emb); RMSNorm(h)]",
    "Emb": "the embedding matrix",
    "OutHead": "the output head",
}

CHECKPOINT_NAMES = (
    "model.layers.10.self_attn.q_a_proj.weight",
    "model.layers.10.self_attn.q_b_proj.weight",
    "model.layers.10.self_attn.kv_a_proj_with_mqa.weight",
    "model.layers.10.self_attn.kv_a_layernorm.weight",
    "model.layers.10.self_attn.kv_b_proj.weight",
    "model.layers.10.self_attn.o_proj.weight",
    "model.layers.10.mlp.gate.weight",
    "model.layers.10.mlp.gate.e_score_correction_bias",
    "model.layers.61.eh_proj.weight",
    "model.layers.61.shared_head.head.weight",
)


def solution_paper_symbols() -> dict[str, str]:
    return dict(zip(CHECKPOINT_NAMES, (
        "W^DQ", "W^UQ;W^QR", "W^DKV;W^KR", "RMSNorm(c^KV)", "W^UK;W^UV", "W^O", "e_i", "b_i", "M_k", "OutHead",
    )))


_ROLE = {  # what each tensor is, said once per name
    "q_a_proj": "q_a_proj maps h (d = 7168) down to the query latent c^Q (d_c' = 1536): W^DQ",
    "q_b_proj": "q_b_proj's rows are, per head, [q_nope (128); q_rope (64)]: W^UQ and W^QR stacked",
    "kv_a_proj_with_mqa": "kv_a_proj_with_mqa has d_c + d_h^R = 576 rows: the latent c^KV (512, W^DKV) and the one "
                          "shared rope key k^R (64, W^KR; the 'with_mqa')",
    "kv_a_layernorm": "kv_a_layernorm normalizes c^KV, the latent that is cached (its size is d_c = 512)",
    "kv_b_proj": "kv_b_proj's rows are, per head, [k_nope (128); v (128)]: W^UK and W^UV stacked",
    "o_proj": "o_proj maps the concatenated head outputs back to d: W^O",
    "gate.weight": "mlp.gate.weight (256 x 7168) holds one centroid e_i per expert; the affinity is "
                   "s_i = sigmoid(u^T e_i)",
    "e_score_correction_bias": "e_score_correction_bias is the balancing bias b_i: a separate tensor (a buffer, not "
                               "a parameter), added to s_i only to choose the experts, never to weight them",
    "eh_proj": "eh_proj (7168 x 14336) is M_k of [V3] eq 21: it projects [RMSNorm(Emb(t_{i+k})); RMSNorm(h)] (2d) to d",
    "shared_head.head": "model.layers.61.shared_head.head is the release's copy of lm_head, the OutHead the MTP "
                        "module shares with the main model",
}


def _role(name: str) -> str:
    return next(text for key, text in _ROLE.items() if key in name)


@checker
def check_paper_symbols(answers) -> None:
    """answers: {checkpoint name: a key of SYMBOL_MENU} for every name of CHECKPOINT_NAMES."""
    if not isinstance(answers, dict):
        print(f"Give a dict {{checkpoint name: symbol}}, not {type(answers).__name__}.")
        return
    missing = [n for n in CHECKPOINT_NAMES if answers.get(n) is None]
    if len(missing) == len(CHECKPOINT_NAMES):
        print(f"Not done yet: give each of the {len(CHECKPOINT_NAMES)} names a symbol from SYMBOL_MENU.")
        return
    unknown = {n: s for n, s in answers.items() if s is not None and s not in SYMBOL_MENU}
    if unknown:
        name, sym = next(iter(unknown.items()))
        print(f"{sym!r} (for {name}) is not a key of SYMBOL_MENU; use one of: {', '.join(SYMBOL_MENU)}.")
        return
    extra = [n for n in answers if n not in CHECKPOINT_NAMES]
    if extra:
        print(f"{extra[0]!r} is not one of the names to map (a typo?); the names are CHECKPOINT_NAMES.")
        return
    want = solution_paper_symbols()
    wrong = [n for n in CHECKPOINT_NAMES if answers.get(n) is not None and answers[n] != want[n]]
    for name in wrong:
        given = answers[name]
        note = ""
        if given in want[name].split(";"):
            note = " Half right: this matrix stacks two of the paper's matrices."
        print(f"{name}: not {given}. {_role(name)}.{note}")
    if missing:
        print(f"Still to do: {', '.join(missing)}.")
    if wrong or missing:
        print(f"{len(CHECKPOINT_NAMES) - len(wrong) - len(missing)} of {len(CHECKPOINT_NAMES)} right so far.")
        return
    print("Correct: the checkpoint stacks matrices the paper keeps apart ([W^DKV; W^KR], [W^UQ; W^QR], "
          "[W^UK; W^UV]) and keeps the balancing bias apart from the router weight.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: how many GPUs just for the weights
# ----------------------------------------------------------------------------------------------


def solution_gpus_for_weights(config, bytes_per_param, gpu_bytes):
    """Every parameter of the main model must be resident: ceil(total x bytes / memory of one GPU)."""
    return math.ceil(count_parameters(config)["total"] * bytes_per_param / gpu_bytes)


_GPU_CASES = (
    (ModelConfig.deepseek_v3(), 1, 80 * GiB),
    (ModelConfig.deepseek_v3(), 2, 141 * GiB),
    (ModelConfig.deepseek_v3(), 1, 100 * GiB),
    (ModelConfig.deepseek_v3(), 2, 192 * GiB),
)


def _n(config, key):
    return count_parameters(config)[key]


_GPU_MISTAKES = (
    (lambda c, b, g: math.ceil(_n(c, "active") * b / g),
     "you counted the 37.6 B ACTIVE parameters. A token uses 8 of the 256 routed experts per layer, but the next "
     "token uses other ones: every expert of every layer must be in GPU memory, all 671 B parameters"),
    (lambda c, b, g: math.ceil(_n(c, "total_with_mtp") * b / g),
     "you added the MTP module: the question is about the main model (servers load the MTP module only to draft "
     "tokens for speculative decoding)"),
    (lambda c, b, g: _n(c, "total") * b // g, "you rounded down: the remainder needs one more GPU (math.ceil)"),
    (lambda c, b, g: round(_n(c, "total") * b / g), "you rounded to the nearest: a GPU too few whenever the "
                                                    "fraction is below 0.5 (use math.ceil)"),
    (lambda c, b, g: _n(c, "total") * b / g, "a fraction of a GPU does not exist: round up with math.ceil"),
    (lambda c, b, g: math.ceil(_n(c, "total") * 8 * b / g), "8 times too many: bytes_per_param is already bytes"),
    (lambda c, b, g: math.ceil(_n(c, "total") / g), "you forgot bytes_per_param (2 for BF16)"),
)


@checker
def check_gpus_for_weights(fn) -> None:
    """fn(config, bytes_per_param, gpu_bytes) -> the fewest GPUs whose memory holds the main model's weights."""
    results = run_cases(fn, _GPU_CASES, solution_gpus_for_weights,
                         hint="dsv3_edu.accounting.count_parameters(config) has the counts.")
    if results is None:
        return
    wrong = [r for r in results if not same_number(r[1], r[2])]
    if not wrong:
        print("Correct: 8 GPUs of 80 GiB at FP8 (1 byte per parameter), 9 of 141 GiB at BF16. A real server also "
              "needs room for the KV cache and activations, so 8 x 80 GiB is not enough in practice.")
        return
    (config, b, g), got, want = wrong[0]
    print(f"For {b} byte(s) per parameter and {g / GiB:g} GiB per GPU: expected {want} GPUs, got {got}.")
    print("Hint: " + (diagnose(results, _GPU_MISTAKES) or "count_parameters(config)['total'] x bytes_per_param, "
                                                           "divided by gpu_bytes, rounded up") + ".")


# ----------------------------------------------------------------------------------------------
# Exercise 4: the longest context whose MLA cache fits
# ----------------------------------------------------------------------------------------------


def solution_max_context(config, free_bytes, batch, bytes_per_value):
    """MLA caches (d_c + d_h^R) values per token and main layer; batch sequences share free_bytes."""
    per_token = (config.kv_lora_rank + config.qk_rope_head_dim) * config.num_hidden_layers * bytes_per_value
    return free_bytes // (per_token * batch)


_CONTEXT_CASES = (
    (ModelConfig.deepseek_v3(), 388 * GiB, 16, 2),
    (ModelConfig.deepseek_v3(), 40 * GiB, 1, 1),
    (ModelConfig.tiny(num_hidden_layers=5, kv_lora_rank=48, qk_rope_head_dim=16), 10**6, 3, 4),
)


def _ctx(per_layer, layers=None, bytes_=True, batch=True, floor=True):
    def f(c, free, b, n):
        n_layers = layers(c) if layers else c.num_hidden_layers
        total = per_layer(c) * n_layers * (n if bytes_ else 1) * (b if batch else 1)
        return free // total if floor else free / total
    return f


def _mla(c):
    return c.kv_lora_rank + c.qk_rope_head_dim


_CONTEXT_MISTAKES = (
    (_ctx(lambda c: c.num_attention_heads * (c.qk_head_dim + c.v_head_dim)),
     "that is the expanded per-head K and V (40,960 values per token and layer): MLA caches only the latent and "
     "the rope key, d_c + d_h^R = 576"),
    (_ctx(lambda c: c.kv_lora_rank), "you forgot the rope key k^R (d_h^R values per token and layer): it is cached "
                                     "next to the latent"),
    (_ctx(_mla, layers=lambda c: 1), "every layer caches its own latent: multiply by num_hidden_layers"),
    (_ctx(_mla, batch=False), "each of the batch's sequences has its own cache: divide by batch too"),
    (_ctx(_mla, bytes_=False), "you counted values, not bytes: multiply by bytes_per_value"),
    (_ctx(_mla, layers=lambda c: c.num_hidden_layers + c.num_nextn_predict_layers),
     "you counted the MTP module's layer: this question is about the main model's num_hidden_layers"),
    (_ctx(_mla, floor=False), "a token is whole: round down (//)"),
    (lambda c, free, b, n: solution_max_context(c, free, b, n) + 1,
     "one token too many: that context no longer fits; round down (//)"),
    (lambda c, free, b, n: math.ceil(free / ((c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * n * b)),
     "rounded up: that context no longer fits; round down (//)"),
)


@checker
def check_max_context(fn) -> None:
    """fn(config, free_bytes, batch, bytes_per_value) -> the most tokens per sequence whose MLA cache fits."""
    results = run_cases(fn, _CONTEXT_CASES, solution_max_context)
    if results is None:
        return
    wrong = [r for r in results if not same_number(r[1], r[2])]
    if not wrong:
        config, free, batch, n = _CONTEXT_CASES[0]
        expanded = _CONTEXT_MISTAKES[0][0](config, free, batch, n)
        print(f"Correct: 388 GiB (about what 8 x H200 keep after the FP8 weights) hold 16 sequences of "
              f"{results[0][2]:,} tokens of MLA cache, more than the {config.max_position_embeddings:,} positions "
              f"the model supports. The expanded per-head cache would allow {expanded:,}.")
        return
    (config, free, batch, n), got, want = wrong[0]
    print(f"For {free / GiB:g} GiB free, batch {batch}, {n} byte(s) per value, {config.num_hidden_layers} layers: "
          f"expected {want:,} tokens, got {got:,}.")
    recipe = "free_bytes // (batch x (kv_lora_rank + qk_rope_head_dim) x num_hidden_layers x bytes_per_value)"
    print("Hint: " + (diagnose(results, _CONTEXT_MISTAKES) or recipe) + ".")
