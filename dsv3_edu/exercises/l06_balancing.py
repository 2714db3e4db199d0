"""Lesson 06 exercises: the bias update by hand, MaxVio, how fast the bias acts, the sequence-wise loss.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong (or "Correct: ...");
it returns nothing and never raises on a stub. ``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ._common import NOT_DONE as _NOT_DONE
from ._common import as_scalar, checker, diagnose
from ._common import call_learner as _call

# ----------------------------------------------------------------------------------------------
# Exercise 1: the bias update by hand ([LF] Alg. 1, [V3] 2.1.2)
# ----------------------------------------------------------------------------------------------

BY_HAND_GAMMA = 0.01
BY_HAND_LOADS = ((7, 1, 4, 4), (5, 3, 3, 5), (3, 5, 4, 4))  # tokens per expert in steps 1, 2, 3 (mean 4)


def _bias_after(loads=BY_HAND_LOADS, gamma=BY_HAND_GAMMA, rule=None) -> torch.Tensor:
    rule = rule or (lambda c: torch.sign(c.mean() - c))
    bias = torch.zeros(len(loads[0]), dtype=torch.float64)
    for step in loads:
        bias = bias + gamma * rule(torch.tensor(step, dtype=torch.float64))
    return bias


def solution_bias_by_hand() -> list[float]:
    """Step 1: expert 0 over (-gamma), expert 1 under (+gamma), 2 and 3 at the mean (0); and so on."""
    return [round(v, 6) for v in _bias_after().tolist()]


_BY_HAND_MISTAKES = (
    (lambda c: torch.sign(c - c.mean()), "the signs are reversed: an overloaded expert's bias goes DOWN "
     "(b_i + gamma * sign(mean - c_i)), so that it is chosen less next time"),
    (lambda c: c.mean() - c, "you moved each bias by gamma times the load gap. The step is exactly gamma, "
     "whatever the size of the gap: only its sign counts"),
    (lambda c: torch.where(c > c.mean(), -1.0, 1.0).double(), "an expert exactly at the mean load keeps its bias "
     "(sign(0) = 0); you moved it up"),
)


@checker
def check_bias_by_hand(answer) -> None:
    """answer: the 4 biases after step 3 (a list or a tensor)."""
    if answer is None:
        print("Not done yet: set `answer` to the four biases after step 3, e.g. [0.0, 0.0, 0.0, 0.0].")
        return
    try:
        got = torch.as_tensor(answer, dtype=torch.float64).flatten()
    except (TypeError, ValueError):
        print(f"Give four numbers (a list or a tensor), not {type(answer).__name__}.")
        return
    if got.numel() != 4:
        print(f"Give one bias per expert: 4 numbers, got {got.numel()}.")
        return
    want = _bias_after()
    if torch.allclose(got, want, atol=1e-9):
        print(f"Correct: {solution_bias_by_hand()}. Each step moves every bias by -gamma, 0 or +gamma; "
              "after 3 steps a bias is a multiple of gamma between -3 gamma and +3 gamma.")
        return
    print(f"Not quite: you wrote {[round(v, 6) for v in got.tolist()]}.")
    if torch.allclose(got, want / BY_HAND_GAMMA, atol=1e-9):
        print(f"Hint: you counted the steps but forgot to multiply by gamma = {BY_HAND_GAMMA}.")
        return
    last = _bias_after(BY_HAND_LOADS[-1:])
    if torch.allclose(got, last, atol=1e-9):
        print("Hint: that is step 3 alone. The bias accumulates: add the updates of steps 1, 2 and 3.")
        return
    for rule, why in _BY_HAND_MISTAKES:
        if torch.allclose(got, _bias_after(rule=rule), atol=1e-9):
            print("Hint: " + why + ".")
            return
    print("Hint: for each step compute the mean load (4 here), then per expert +gamma if below it, "
          "-gamma if above, 0 if equal; add the three steps.")


# ----------------------------------------------------------------------------------------------
# Exercise 2: MaxVio ([LF] eq 4)
# ----------------------------------------------------------------------------------------------


def solution_max_violation(loads: torch.Tensor) -> float:
    """(max_i Load_i - mean Load) / mean Load."""
    loads = loads.double()
    return float((loads.max() - loads.mean()) / loads.mean())


_VIO_CASES = (
    torch.tensor([10, 2, 5, 3]),  # mean 5, max 10: MaxVio 1
    torch.tensor([4, 4, 4, 4]),  # balanced: 0
    torch.tensor([8, 0, 0, 0, 0, 0, 0, 0]),  # collapsed onto one of 8: 7
    torch.tensor([3, 6, 9, 6]),  # mean 6: 0.5
)


def _stats(loads):
    x = loads.double()
    return x, x.mean(), x.max()


# Typical mistakes, each as the function it is; one is named only if it reproduces the answer on EVERY case.
_VIO_MISTAKES = (
    (lambda loads: float((_stats(loads)[2] - _stats(loads)[0].min()) / _stats(loads)[1]),
     "you used max - min; MaxVio compares the busiest expert with the MEAN load"),
    (lambda loads: float(_stats(loads)[2] / _stats(loads)[1]),
     "off by exactly 1: (max - mean) / mean = max / mean - 1; subtract the mean first"),
    (lambda loads: float(_stats(loads)[2] - _stats(loads)[1]),
     "you forgot to divide by the mean load (MaxVio is relative: 1 means twice the fair share)"),
    (lambda loads: float((_stats(loads)[2] - _stats(loads)[1]) / _stats(loads)[2]),
     "you divided by the max; divide by the mean load"),
    (lambda loads: float(_stats(loads)[0].std() / _stats(loads)[1]),
     "that is the coefficient of variation; MaxVio looks at the single busiest expert"),
    (lambda loads: float((_stats(loads)[1] - _stats(loads)[0].min()) / _stats(loads)[1]),
     "you measured the LEAST loaded expert, (mean - min) / mean; MaxVio is about the busiest one: (max - mean) / "
     "mean"),
    (lambda loads: float((_stats(loads)[2] - _stats(loads)[1]) // _stats(loads)[1]),
     "whole-number division (//) drops the fraction: divide with /"),
)


@checker
def check_max_violation(fn) -> None:
    """fn(loads (E,)) -> MaxVio as a float (or a 0-dim tensor)."""
    results = []
    for loads in _VIO_CASES:
        got = _call(fn, loads.clone(), hint="loads are integers: convert with loads.float() before taking the mean.")
        if got is _NOT_DONE:
            return
        got = as_scalar(got, what="MaxVio of the layer")
        if got is None:
            return
        results.append(((loads,), got, solution_max_violation(loads)))
    near = lambda a, b: abs(a - b) <= 1e-6 * max(1.0, abs(b))  # noqa: E731
    if all(near(got, want) for _, got, want in results):
        print("Correct: 0 is perfect balance, 1 means the busiest expert has twice its fair share; "
              "8 experts collapsed onto one give 7 (= E/K - 1 with K=1).")
        return
    (loads,), got, want = next(r for r in results if not near(r[1], r[2]))
    print(f"For loads={loads.tolist()}: expected {want:.4f}, got {got:.4f}.")
    why = diagnose(results, _VIO_MISTAKES, same=near)
    print("Hint: " + (why + "." if why else "not one of the usual mistakes. MaxVio = (max_i Load_i - mean Load) / "
                      "mean Load, the busiest expert against the mean."))


# ----------------------------------------------------------------------------------------------
# Exercise 3: how fast can the bias act?
# ----------------------------------------------------------------------------------------------

FLIP_GAP = 0.05  # s_busy - s_idle for one token
FLIP_GAMMAS = (1e-3, 1e-4)


def solution_steps_to_flip() -> tuple[int, int]:
    """Each step the busy expert's bias falls by gamma AND the idle one's rises by gamma: the gap closes by
    2 gamma per step, so it takes gap / (2 gamma) steps to close it (one more to pass it)."""
    return tuple(round(FLIP_GAP / (2 * g)) for g in FLIP_GAMMAS)


@checker
def check_steps_to_flip(answer) -> None:
    """answer: (steps with gamma = 1e-3, steps with gamma = 1e-4)."""
    if answer is None:
        print("Not done yet: set `answer` to two numbers of steps, e.g. (10, 100).")
        return
    try:
        got = [float(a) for a in answer]
    except (TypeError, ValueError):
        print(f"Give two numbers, e.g. (10, 100); got {answer!r}.")
        return
    if len(got) != 2:
        print(f"Give two numbers: the steps for gamma = 1e-3 and for gamma = 1e-4; got {len(got)}.")
        return
    want = solution_steps_to_flip()
    if all(w <= g <= w + 1 for g, w in zip(got, want)):
        print(f"Correct: {want[0]} and {want[1]} steps (one more to break the tie). The gap closes by 2 gamma "
              "per step, whatever its size: gamma sets the speed, and a 10x smaller gamma needs 10x more steps.")
        return
    twice = [FLIP_GAP / g for g in FLIP_GAMMAS]
    if all(abs(g - t) <= 1 for g, t in zip(got, twice)):
        print(f"You got {got[0]:g} and {got[1]:g}: that counts one bias only. Both move in the same step "
              "(the busy expert's down by gamma, the idle one's up by gamma), so the gap closes by 2 gamma per step.")
        return
    if got[1] < got[0]:
        print("A smaller gamma moves the bias less per step: it needs MORE steps, not fewer.")
        return
    print(f"Not quite ({got[0]:g}, {got[1]:g}). The gap is {FLIP_GAP}; per step each of the two biases moves by "
          "exactly gamma, toward each other. How many steps until the gap is closed?")


# ----------------------------------------------------------------------------------------------
# Exercise 4: the complementary sequence-wise balance loss ([V3] eqs 17-20)
# ----------------------------------------------------------------------------------------------


def solution_sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * sum_i f_i P_i per sequence, then the mean over the B sequences."""
    B, T, E = scores.shape
    K = topk_idx.shape[-1]
    counts = torch.zeros(B, E).scatter_add_(1, topk_idx.reshape(B, -1), torch.ones(B, T * K))  # (B, E)
    f = counts * E / (K * T)  # eq 18
    P = (scores / scores.sum(-1, keepdim=True)).mean(dim=1)  # eqs 19-20, (B, E)
    return alpha * (f * P).sum(-1).mean()  # eq 17, mean over sequences


def _seq_cases():
    # Three sequences of T=4 tokens, E=4 experts, K=2. Sequence 0 prefers experts 0 and 1, sequence 1
    # experts 2 and 3, sequence 2 spreads evenly: two lopsided sequences, yet the batch is balanced.
    g = torch.Generator().manual_seed(6)
    scores = torch.rand(3, 4, 4, generator=g) * 0.2 + 0.1  # (B, T, E)
    scores[0, :, :2] += 0.6
    scores[1, :, 2:] += 0.6
    scores[2, :2, 0::2] += 0.6
    scores[2, 2:, 1::2] += 0.6
    topk_idx = scores.topk(2, dim=-1).indices  # (B, T, K)
    return scores, topk_idx, 1e-4


def _seq_mistakes(scores, topk_idx, alpha):
    B, T, E = scores.shape
    K = topk_idx.shape[-1]
    flat = solution_sequence_balance_loss(scores.reshape(1, B * T, E), topk_idx.reshape(1, B * T, K), alpha)
    counts = torch.zeros(B, E).scatter_add_(1, topk_idx.reshape(B, -1), torch.ones(B, T * K))
    norm = scores / scores.sum(-1, keepdim=True)
    return (
        (flat, "you pooled the whole batch (that is the batch-level auxiliary loss). [V3] computes f_i and P_i "
               "per SEQUENCE, then averages the B losses: a lopsided sequence is penalized even when the batch "
               "looks balanced"),
        (alpha * (counts * E / (K * T) * scores.mean(1)).sum(-1).mean(),
         "P_i must use the normalized scores s'_{i,t} = s_{i,t} / sum_j s_{j,t} ([V3] eq 19), not the raw sigmoid"),
        (alpha * (counts / (K * T) * norm.mean(1)).sum(-1).mean(),
         f"off by a factor N_r = {E}: f_i = N_r / (K_r T) * count_i, so a balanced sequence has every f_i = 1"),
        (alpha * (counts / T * norm.mean(1)).sum(-1).mean() * E,
         f"off by a factor K_r = {K}: each token picks K_r experts, f_i = N_r / (K_r T) * count_i"),
        (alpha * (counts * E / (K * T) * norm.mean(1)).sum(-1).sum(),
         "you summed over the sequences; average them"),
        ((counts * E / (K * T) * norm.mean(1)).sum(-1).mean(), "you forgot to multiply by alpha"),
    )


@checker
def check_sequence_balance_loss(fn) -> None:
    """fn(scores (B, T, E), topk_idx (B, T, K), alpha) -> the scalar loss."""
    scores, topk_idx, alpha = _seq_cases()
    got = _call(fn, scores.clone(), topk_idx.clone(), alpha, hint="count each expert's picks per sequence "
                "(scatter_add_ or one_hot), normalize the scores over experts, average over T.")
    if got is _NOT_DONE:
        return
    got = as_scalar(got, what="the loss, the mean over sequences")
    if got is None:
        return
    want = solution_sequence_balance_loss(scores, topk_idx, alpha)
    if abs(float(got) - float(want)) <= 1e-6 * abs(float(want)):
        print(f"Correct: L_Bal = {float(want) / alpha:.4f} x alpha. Pooled over the batch it would be "
              f"{float(_seq_mistakes(scores, topk_idx, alpha)[0][0]) / alpha:.4f} x alpha: the batch looks balanced, "
              "each sequence is not.")
        return
    print(f"Expected {float(want):.6g}, got {float(got):.6g}.")
    for wrong, why in _seq_mistakes(scores, topk_idx, alpha):
        if abs(float(got) - float(wrong)) <= 1e-6 * abs(float(wrong)):
            print("Hint: " + why + ".")
            return
    print("Hint: not one of the usual mistakes. Per sequence f_i = N_r/(K_r T) * (times i was chosen), "
          "P_i = mean_t s'_{i,t}; L = alpha * sum_i f_i P_i, then the mean over sequences.")
