"""Lesson 05 exercises: the group score, the gate weights, and a routing output to debug.

Each ``check_xxx`` prints what is wrong, or "Correct: ...". It returns nothing (so a notebook
cell echoes nothing) and never raises on a stub. ``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ..moe import select_groups
from ..viz import text_table
from ._common import NOT_DONE as _NOT_DONE
from ._common import as_tensor, checker, close
from ._common import call_learner as _call


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in t.tolist()) + "]"


def _close_moe(a: torch.Tensor, b: torch.Tensor) -> bool:
    return close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Exercise 1: the group score
# ----------------------------------------------------------------------------------------------


def solution_group_scores(biased: torch.Tensor, n_group: int) -> torch.Tensor:
    """(N, E) selection scores s + b -> (N, G): per group of E/G consecutive experts, the sum of its top-2."""
    return select_groups(biased, n_group, topk_group=n_group).group_scores


def _group_cases() -> list[tuple[torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(5)
    base = torch.rand(4, 12, generator=gen) - 0.3  # some s + b below 0, as with negative biases
    # token 0: group 0 has one star expert, group 1 two good ones (max and top-2 sum disagree)
    base[0] = torch.tensor([0.95, 0.10, 0.05, 0.02, 0.60, 0.55, 0.20, 0.30, 0.25, -0.20, 0.40, 0.35])
    return [(base, 3), (base.reshape(6, 8)[:, :], 2)]


_GROUP_MISTAKES = (
    (lambda x, G: x.view(x.shape[0], G, -1).amax(-1),
     "you took each group's MAX: that is DeepSeek-V2's group score (and [OFF]'s rule when there is no bias). "
     "DeepSeek-V3 sums the top-2 of each group (K_r / M = 8 / 4 = 2 experts per node), trap 3"),
    (lambda x, G: x.view(x.shape[0], G, -1).sum(-1),
     "you summed EVERY expert of the group; only the top-2 count (a group with 2 great experts and many poor ones "
     "should still win)"),
    (lambda x, G: x.view(x.shape[0], G, -1).topk(2, -1).values.mean(-1),
     "half of the expected values: the mean of the top-2, not their sum. It ranks groups the same way, but the "
     "paper's group score (and every implementation's) is the sum"),
    (lambda x, G: x.view(x.shape[0], -1, G).topk(2, 1).values.sum(1),
     "groups are CONTIGUOUS blocks: experts 0..E/G-1 are group 0 (view(N, G, E // G)), not every G-th expert"),
    (lambda x, G: x.sigmoid().view(x.shape[0], G, -1).topk(2, -1).values.sum(-1),
     "the input is already s + b (sigmoid applied, bias added): do not apply sigmoid again"),
)


@checker
def check_group_scores(fn) -> None:
    """fn(biased (N, E), n_group) -> group scores (N, G): the sum of the top-2 biased scores in each group."""
    for biased, G in _group_cases():
        N, E = biased.shape
        want = solution_group_scores(biased, G)
        got = _call(fn, biased.clone(), G, hint=f"view the (N, E) = {(N, E)} scores as (N, G, E // G) = "
                    f"{(N, G, E // G)}, take topk(2) on the last dim and sum it.")
        if got is _NOT_DONE:
            return
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (N, E // G) and E // G != G:
            print(f"Expected shape {(N, G)} (one score per group), got {tuple(got.shape)}: you reduced over the "
                  f"wrong axis. With view(N, G, E // G) reduce dim -1 (the {E // G} experts of each group).")
            return
        if as_tensor(got, (N, G), "the group scores (one per token and group)") is None:
            return
        if _close_moe(got, want):
            continue
        for wrong, text in _GROUP_MISTAKES:
            if _close_moe(got, wrong(biased, G)):
                print(f"With {G} groups of {E // G}: {text}.")
                return
        print(f"With {G} groups of {E // G}, token 0: expected {_fmt(want[0])}, got {_fmt(got[0])}. "
              "Sum the 2 largest s + b of each group.")
        return
    biased, G = _group_cases()[0]
    print(f"Correct: for token 0 the top-2 sums are {_fmt(solution_group_scores(biased, G)[0])}: group 1 "
          f"(0.60 + 0.55 = 1.15) beats group 0 (0.95 + 0.10 = 1.05), although group 0 holds the best single expert.")


# ----------------------------------------------------------------------------------------------
# Exercise 2: gate weights from the chosen experts
# ----------------------------------------------------------------------------------------------


def solution_gate_weights(
    scores: torch.Tensor, bias: torch.Tensor, topk_idx: torch.Tensor, routed_scaling_factor: float
) -> torch.Tensor:
    """[V3] eqs 13-16: g = s of the chosen experts (UNBIASED), normalized to sum 1, times the scale.

    ``bias`` is not used: it only decided which experts were chosen."""
    chosen = scores.gather(1, topk_idx)  # (N, K)
    return chosen / chosen.sum(dim=-1, keepdim=True) * routed_scaling_factor


def _gate_case():
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(5, 8, generator=gen) * 0.9 + 0.05  # (N, E) sigmoid affinities
    bias = torch.tensor([0.3, -0.2, 0.1, -0.4, 0.25, 0.0, -0.1, 0.15])  # (E,)
    topk_idx = (scores + bias).topk(3, dim=-1).indices  # (N, K), best first
    return scores, bias, topk_idx, 2.5


def _gate_mistakes(scores, bias, idx, scale):
    chosen = scores.gather(1, idx)
    leaked = (scores + bias).gather(1, idx)
    return (
        (leaked / leaked.sum(-1, keepdim=True) * scale,
         "you gathered s + b: the bias leaked into the gate weights (trap 1; HF PR #41647, vLLM PR #12002). The "
         "bias only SELECTS experts; weigh them with the unbiased s"),
        (leaked * scale, "you used s + b (the bias leaked in, trap 1) and did not normalize"),
        (chosen * scale, "not normalized: divide the K chosen s by their sum first ([V3] eq 13), then scale"),
        (chosen / chosen.sum(-1, keepdim=True),
         "right up to the factor routed_scaling_factor: the normalized weights sum to 1, multiply them by it"),
        (chosen / scores.sum(-1, keepdim=True) * scale,
         "you normalized over ALL experts; normalize over the K chosen ones only (eq 13 sums over the chosen)"),
        (chosen.softmax(-1) * scale, "softmax is DeepSeek-V2's gate; V3 divides the sigmoid scores by their sum"),
        (chosen.sort(-1, descending=True).values / chosen.sum(-1, keepdim=True) * scale,
         "the values are right but the order is not: weight k belongs to expert topk_idx[:, k]"),
    )


@checker
def check_gate_weights(fn) -> None:
    """fn(scores (N, E), bias (E,), topk_idx (N, K), routed_scaling_factor) -> gate weights (N, K)."""
    scores, bias, idx, scale = _gate_case()
    want = solution_gate_weights(scores, bias, idx, scale)
    got = _call(fn, scores.clone(), bias.clone(), idx.clone(), scale,
                hint="scores.gather(1, topk_idx) picks the s of the chosen experts, shape (N, K).")
    if got is _NOT_DONE:
        return
    if as_tensor(got, want.shape, "one gate weight per token and chosen expert, (N, K)") is None:
        return
    if _close_moe(got, want):
        print(f"Correct: token 0 chose experts {idx[0].tolist()} with weights {_fmt(want[0])} (sum 2.5). The "
              f"bias picked them; the unbiased s weighs them.")
        return
    for wrong, text in _gate_mistakes(scores, bias, idx, scale):
        if _close_moe(got, wrong):
            print(f"Token 0 (experts {idx[0].tolist()}): expected {_fmt(want[0])}, got {_fmt(got[0])}: {text}.")
            return
    print(f"Token 0 (experts {idx[0].tolist()}): expected {_fmt(want[0])}, got {_fmt(got[0])}. "
          "Gather s at topk_idx, divide by its sum over the K chosen, multiply by routed_scaling_factor.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: what is wrong with this routing output?
# ----------------------------------------------------------------------------------------------

BUG_SCORES = (0.90, 0.80, 0.30, 0.20, 0.70, 0.60, 0.10, 0.40)  # s, 8 experts
BUG_BIAS = -0.65  # the same balancing bias on every expert
BUG_CONFIG = dict(n_group=4, topk_group=2, top_k=4, routed_scaling_factor=2.5)
BUG_OUTPUT_IDS = (0, 1, 4, 2)

BUG_CHOICES = {
    "A": "the bias leaked into the gate weights",
    "B": "the dropped groups were masked with 0.0 instead of -inf",
    "C": "the group score is the max of each group (V2) instead of the sum of its top-2 (V3)",
    "D": "the gate weights were not normalized before the scaling",
    "E": "nothing: this output is correct",
}


def _bug_tensors():
    s = torch.tensor(BUG_SCORES)
    b = torch.full_like(s, BUG_BIAS)
    return s, b


def bug_output_weights() -> torch.Tensor:
    """The weights the buggy router printed: unbiased s of its chosen experts, normalized, times 2.5."""
    s, _ = _bug_tensors()
    w = s[list(BUG_OUTPUT_IDS)]
    return w / w.sum() * BUG_CONFIG["routed_scaling_factor"]


def show_spot_the_bug() -> None:
    """Print the router's input and its (wrong) output for exercise 3."""
    s, b = _bug_tensors()
    c = BUG_CONFIG
    per = len(BUG_SCORES) // c["n_group"]
    rows = [[i, i // per, f"{s[i].item():.2f}", f"{b[i].item():+.2f}", f"{(s[i] + b[i]).item():+.2f}"]
            for i in range(len(BUG_SCORES))]
    print(f"One token, {len(BUG_SCORES)} routed experts in {c['n_group']} groups of {per}; keep "
          f"{c['topk_group']} groups, top-{c['top_k']}, routed_scaling_factor {c['routed_scaling_factor']}.")
    print(text_table(("expert", "group", "s", "b", "s + b"), rows))
    print(f"\nThe router returned experts {list(BUG_OUTPUT_IDS)} with weights {_fmt(bug_output_weights())} "
          f"(sum {bug_output_weights().sum().item():.3f}).")
    print("\nWhat went wrong?")
    for letter, text in BUG_CHOICES.items():
        print(f"  {letter}: {text}")


def solution_spot_the_bug() -> str:
    """Group scores (top-2 sums of s + b): 0.40, -0.80, 0.00, -0.80, so groups 0 and 2 are kept, and a correct
    router picks experts 0, 1, 4, 5. Expert 2 lives in dropped group 1: its masked score must be -inf. With 0.0
    it beats expert 5 (s + b = -0.05): every biased score here is below 0.2, most below 0."""
    return "B"


@checker
def check_spot_the_bug(answer) -> None:
    """answer: the letter of BUG_CHOICES that explains the printed routing output."""
    if answer is None:
        print('Not done yet: set `answer` to one letter, e.g. answer = "A".')
        return
    if not isinstance(answer, str) or answer.strip().upper() not in BUG_CHOICES:
        print(f"Answer with one of the letters {', '.join(BUG_CHOICES)} (a string), not {answer!r}.")
        return
    letter = answer.strip().upper()
    s, b = _bug_tensors()
    w = bug_output_weights()
    if letter == "A":
        print(f"Not A: the weights are the UNBIASED s of experts {list(BUG_OUTPUT_IDS)} normalized and scaled: "
              f"0.90 / (0.90 + 0.80 + 0.70 + 0.30) x 2.5 = {w[0].item():.3f}. With the bias leaked in, they would "
              "come from s + b (0.25, 0.15, ...) and one would even be negative. Look at WHICH experts were chosen.")
    elif letter == "C":
        print("Not C: here the max rule keeps the same groups. Group maxima of s + b are +0.25, -0.35, +0.05, "
              "-0.25 and the top-2 sums +0.40, -0.80, +0.00, -0.80: both keep groups 0 and 2. So the group rule "
              "cannot explain expert 2. Which group is expert 2 in, and was that group kept?")
    elif letter == "D":
        print(f"Not D: the weights sum to {w.sum().item():.3f} = routed_scaling_factor, so they were normalized "
              "(unnormalized they would sum to 2.7 x 2.5). Look at WHICH experts were chosen.")
    elif letter == "E":
        print("Not E: expert 2 is in group 1, and group 1 was dropped (its top-2 sum -0.80 is among the 2 lowest). "
              "A correct router never picks an expert of a dropped group. Why could this one win?")
    else:
        print("Correct: B. Groups 0 and 2 are kept (top-2 sums +0.40 and +0.00), so the right answer is experts "
              "[0, 1, 4, 5]. Filled with 0.0, dropped expert 2 outranks expert 5 (s + b = -0.05). Note the bias is "
              "the same on every expert: a constant shift never changes a correct routing, yet it broke this one "
              "([OFF] issue #741; HF issue #45440).")
