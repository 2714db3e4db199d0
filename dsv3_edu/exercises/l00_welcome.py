"""Lesson 00 exercises: what fraction of DeepSeek-V3 one token uses; the size of one MoE layer.

Each ``check_xxx`` prints what is wrong, or "Correct: ...". It returns nothing (so a notebook
cell echoes nothing) and never raises on a stub. ``solution_xxx`` is one answer.
"""

from __future__ import annotations

import math

from ..accounting import count_parameters
from ..config import ModelConfig
from ._common import NOT_DONE, call_learner, checker

# ----------------------------------------------------------------------------------------------
# Exercise 1: the active fraction
# ----------------------------------------------------------------------------------------------


def solution_active_fraction() -> float:
    counts = count_parameters(ModelConfig.deepseek_v3())
    return counts["active"] / counts["total"]


@checker
def check_active_fraction(answer) -> None:
    """answer: active parameters per token / total parameters of the main model, as a fraction."""
    want = solution_active_fraction()
    if answer is None:
        print("Not done yet: set `answer` to a number, e.g. answer = 12_345 / 67_890.")
        return
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        print(f"Give a number (a fraction such as 0.25), not {type(answer).__name__}.")
        return
    if not math.isfinite(answer):
        print(f"answer is {answer}, not a finite number: divide the active count by the total.")
        return
    if abs(answer - 100 * want) < 0.05:
        print("That looks like a percentage: give the fraction (divide by 100).")
        return
    if abs(answer - 8 / 256) < 1e-3:
        print("8 / 256 is the fraction of ROUTED experts a token uses. Attention, the shared expert, the dense "
              "layers, the router, embedding and head are used by every token: the active fraction is larger.")
        return
    if answer > 1 and abs(1 / answer - want) < 1e-3:
        print("Upside down: divide the active count by the total.")
        return
    counts = count_parameters(ModelConfig.deepseek_v3())
    with_mtp = (counts["active"] + counts["mtp_active"]) / (counts["total"] + counts["mtp"])
    if abs(answer - with_mtp) < 2e-6 and abs(answer - want) > 2e-6:
        print(f"You counted the MTP module too ({with_mtp:.5f}). The question is about the main model, the part "
              "that generates every token: use count_parameters(...)['active'] and ['total'] alone.")
        return
    headlines = {37 / 671: "37B / 671B, the paper's rounded headline numbers",
                 37 / 685: "37B / 685B, the rounded headlines with the MTP module in the total",
                 36.7 / 671: "36.7B (DeepSeek's README count) / 671B"}
    for value, what in headlines.items():
        if abs(answer - value) < 5e-5:
            print(f"That is {what}. Use the exact counts of the package (count_parameters, or the two numbers "
                  "printed above): the rounding moves the fraction in the third digit.")
            return
    if abs(answer - want) > 5e-4:
        print(f"Not quite: got {answer:.4f}. Take count_parameters(...)['active'] and ['total'] (or the two "
              "numbers printed above) and divide.")
        return
    print(f"Correct: {want:.4f}, about 1/{1 / want:.0f}: a token touches 5.6% of the weights.")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 2: the parameters of one MoE feed-forward
# ----------------------------------------------------------------------------------------------


def solution_moe_layer_params(config: ModelConfig) -> int:
    """Routed experts + shared experts (3 matrices each: gate_proj, up_proj, down_proj) + the router."""
    expert = 3 * config.hidden_size * config.moe_intermediate_size
    router = config.n_routed_experts * config.hidden_size
    return (config.n_routed_experts + config.n_shared_experts) * expert + router


@checker
def check_moe_layer_params(fn) -> None:
    """fn(config) -> parameters of one MoE layer's feed-forward (no norms, no attention)."""
    for config in (ModelConfig.deepseek_v3(), ModelConfig.tiny(), ModelConfig.tiny(n_shared_experts=2)):
        got = call_learner(fn, config)
        if got is NOT_DONE:
            return
        want = solution_moe_layer_params(config)
        if got == want:
            continue
        if isinstance(got, bool) or not isinstance(got, int):
            print(f"Return an int (a parameter count), not {got!r}.")
            return
        d, inter = config.hidden_size, config.moe_intermediate_size
        expert, router = 3 * d * inter, config.n_routed_experts * d
        n_r, n_s = config.n_routed_experts, config.n_shared_experts
        print(f"For N_r={n_r}, N_s={n_s}, d={d}, expert width {inter}: expected {want:,}, got {got:,}.")
        hints = {
            want - router: "the router is missing: its weight is N_r x d (one row per routed expert)",
            want + n_r: "the balancing bias e_score_correction_bias is a buffer, not a parameter: leave it out",
            want - n_s * expert: "the shared expert(s) are missing: every token goes through them",
            (n_r + n_s) * 2 * d * inter + router: "an expert is SwiGLU: three matrices (gate_proj, up_proj, down_proj)",
            config.num_experts_per_tok * expert + n_s * expert + router:
                "that is the ACTIVE part (K_r experts); the question asks for all N_r routed experts",
        }
        print("Hint: " + hints.get(got, "count (N_r + N_s) experts of 3 x d x width each, plus the N_r x d router."))
        return
    print(f"Correct: {solution_moe_layer_params(ModelConfig.deepseek_v3()):,} parameters per MoE layer in "
          "DeepSeek-V3, 58 such layers.")
    return
