"""Lesson 11 exercises: plan a dispatch, the bytes of one token in DeepSeek-V3, the global bias step.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong (or "Correct: ...");
it returns nothing and never raises on a stub. ``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch

from ._common import NOT_DONE as _NOT_DONE
from ._common import as_int_list, as_tensor, checker
from ._common import call_learner as _call

# ----------------------------------------------------------------------------------------------
# Exercise 1: how many rows a rank sends each rank in the dispatch
# ----------------------------------------------------------------------------------------------


def solution_send_counts(topk_idx: torch.Tensor, experts_per_rank: int, world_size: int) -> torch.Tensor:
    """(N, K) expert ids -> (W,) rows for each rank: a token counts once per rank that holds any of its experts."""
    dest = topk_idx // experts_per_rank  # (N, K) rank of each chosen expert
    hit = torch.zeros(topk_idx.shape[0], world_size, dtype=torch.bool).scatter_(1, dest, True)  # (N, W)
    return hit.sum(0)


_COUNT_CASES = (
    (torch.tensor([[0, 1], [0, 2], [3, 2], [1, 3], [1, 0]]), 2, 2),
    (torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [0, 7, 3, 4], [1, 2, 5, 6], [6, 7, 4, 0]]), 2, 4),
    (torch.tensor([[5, 4, 1], [0, 2, 3], [7, 6, 5], [3, 4, 0], [1, 6, 2], [7, 0, 4]]), 4, 2),
)


def _count_mistakes(idx, per, world):
    return (
        (torch.bincount((idx // per).flatten(), minlength=world),
         "you counted one row per (token, expert) pair. DeepSeek-V3 sends a token once to each rank (node) that "
         "holds any of its experts; the rank hands the row to its experts itself"),
        (solution_send_counts(idx % world, 1, world),
         "you placed expert e on rank e % W (round robin). Rank t holds the contiguous block of experts "
         "t * E/W ... (t + 1) * E/W - 1, so the rank of expert e is e // (E/W)"),
        (torch.bincount((idx // per)[:, 0], minlength=world),
         "you looked only at each token's first expert; all K experts decide where the token goes"),
        (torch.full((world,), idx.shape[0]), "you sent every token to every rank: that is a broadcast, "
         "not a dispatch"),
    )


@checker
def check_send_counts(fn) -> None:
    """fn(topk_idx (N, K), experts_per_rank, world_size) -> (W,) rows sent to each rank."""
    for idx, per, world in _COUNT_CASES:
        got = _call(fn, idx.clone(), per, world, hint="rank of an expert: topk_idx // experts_per_rank")
        if got is _NOT_DONE:
            return
        if isinstance(got, torch.Tensor) and got.is_floating_point() and bool((got == got.round()).all()):
            got = got.long()  # whole-valued float counts (e.g. from a float sum) are fine
        counts = as_int_list(got)
        if counts is None:
            print(f"Return the {world} counts as an integer tensor (or a list of ints), not {type(got).__name__}"
                  + (f" of dtype {got.dtype}." if isinstance(got, torch.Tensor) else "."))
            return
        if len(counts) != world:
            print(f"Return one count per rank: {world} numbers, got {len(counts)}.")
            return
        want = solution_send_counts(idx, per, world)
        got = torch.tensor(counts)
        if torch.equal(got, want):
            continue
        print(f"For topk_idx={idx.tolist()}, {per} experts per rank, {world} ranks: expected {want.tolist()}, "
              f"got {got.tolist()}.")
        for wrong, why in _count_mistakes(idx, per, world):
            if torch.equal(got, wrong.long()):
                print("Hint: " + why + ".")
                return
        print("Hint: for each token, find the set of ranks of its K experts; add 1 to each rank in the set.")
        return
    print("Correct: a token goes once to each rank that holds one of its experts, however many of its "
          "experts live there. With the node limit that set has at most M ranks.")


# ----------------------------------------------------------------------------------------------
# Exercise 2: the dispatch bytes of one token in DeepSeek-V3
# ----------------------------------------------------------------------------------------------

V3_HIDDEN, V3_TOP_K, V3_NODES, V3_MAX_NODES = 7168, 8, 8, 4


def solution_token_bytes() -> tuple[int, int]:
    """FP8 dispatch (1 byte per value, scales ignored): at most M = 4 nodes, else at most min(K, nodes) = 8."""
    return V3_HIDDEN * 1 * V3_MAX_NODES, V3_HIDDEN * 1 * min(V3_TOP_K, V3_NODES)


@checker
def check_token_bytes(answer) -> None:
    """answer: (bytes with the node limit, bytes without it), each the most one token can need."""
    if answer is None:
        print("Not done yet: set `answer = (bytes_with_limit, bytes_without_limit)`.")
        return
    values = as_int_list(answer)
    if values is None:
        print(f"Give two whole numbers (with the limit, without it), not {type(answer).__name__}.")
        return
    got = tuple(values)
    if len(got) != 2:
        print(f"Give two numbers, with the limit and without it; got {len(got)}.")
        return
    want = solution_token_bytes()
    if got == want:
        print(f"Correct: at most {want[0]:,} bytes with the limit and {want[1]:,} without: the node limit halves "
              "the worst case of the bytes a token sends across nodes (and the combine sends BF16 back, twice "
              "as many bytes per value).")
        return
    print(f"Not quite: you gave {got}.")
    d, K, M = V3_HIDDEN, V3_TOP_K, V3_MAX_NODES
    guesses = {
        (d * 2 * M, d * 2 * K): "you used 2 bytes per value (BF16). V3 dispatches in FP8: 1 byte per value",
        (d * 4 * M, d * 4 * K): "you used 4 bytes per value (fp32). V3 dispatches in FP8: 1 byte per value",
        (d * K, d * K): "with the limit a token reaches at most M = 4 nodes, even though it has K = 8 experts",
        (d * M, d * M): "without the limit the 8 experts may sit on 8 different nodes",
        (d * 8 * 4, d * 8 * 8): "a token is sent once per node, not once per expert: there are at most 4 "
                                "(8) nodes, and d values each",
        (d * M // 8, d * K // 8): "d = 7168 values of 1 byte each: no division by 8 (that would be bits)",
    }
    for wrong, why in guesses.items():
        if got == wrong:
            print("Hint: " + why + ".")
            return
    if got == want[::-1]:
        print("Hint: the pair is (with the limit, without it): the smaller number comes first.")
        return
    print("Hint: bytes = (nodes the token reaches) x d x (bytes per value); nodes <= M with the limit, "
          "<= min(K, number of nodes) without.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: the bias step of a data-parallel run
# ----------------------------------------------------------------------------------------------


def solution_global_bias_step(rank_loads: torch.Tensor, bias: torch.Tensor, gamma: float) -> torch.Tensor:
    """Sum the ranks' counts (the all-reduce), then the usual step on the global load."""
    c = rank_loads.double().sum(0)  # (E,) the global batch
    return bias + gamma * torch.sign(c.mean() - c)


_BIAS_CASES = (
    (torch.tensor([[6, 2, 4, 4], [2, 6, 4, 4]]), torch.zeros(4), 0.01),  # opposite shards cancel
    (torch.tensor([[5, 1, 3, 3], [1, 3, 5, 3], [3, 3, 1, 5]]), torch.tensor([0.1, -0.1, 0.0, 0.0]), 0.001),
    (torch.tensor([[9, 0, 0, 3], [0, 1, 2, 9]]), torch.tensor([0.0, 0.02, -0.02, 0.0]), 0.01),
)


def _bias_mistakes(loads, bias, gamma):
    c = loads.double()
    return (
        (bias + gamma * torch.sign(c[0].mean() - c[0]),
         "you used rank 0's counts only. Every rank must step on the load of the WHOLE global batch: "
         "all-reduce (sum) the counts first"),
        (bias + gamma * torch.sign(c.mean(1, keepdim=True) - c).mean(0),
         "you averaged the ranks' own steps. The sign of the sum is not the mean of the signs: sum the "
         "counts first, then take one sign step"),
        (bias + gamma * torch.sign(c.mean(1, keepdim=True) - c).sum(0),
         "you added up the ranks' own steps: the bias moves by gamma per update, not W * gamma. Sum the counts, "
         "then one sign step"),
        (bias - gamma * torch.sign(c.sum(0).mean() - c.sum(0)),
         "the sign is reversed: an overloaded expert's bias goes down"),
        (gamma * torch.sign(c.sum(0).mean() - c.sum(0)), "you returned the step alone: add it to the bias"),
    )


@checker
def check_global_bias_step(fn) -> None:
    """fn(rank_loads (W, E) tokens per expert on each rank, bias (E,), gamma) -> new bias (E,)."""
    for loads, bias, gamma in _BIAS_CASES:
        got = _call(fn, loads.clone(), bias.clone(), gamma, hint="rank_loads holds integers: use .float()")
        if got is _NOT_DONE:
            return
        got = as_tensor(got, shape=bias.shape, what="the new bias")
        if got is None:
            return
        want = solution_global_bias_step(loads, bias, gamma)
        if torch.allclose(got.double(), want, atol=1e-9):
            continue
        print(f"For rank_loads={loads.tolist()}, bias={bias.tolist()}, gamma={gamma}: expected "
              f"{[round(v, 6) for v in want.tolist()]}, got {[round(v, 6) for v in got.double().tolist()]}.")
        for wrong, why in _bias_mistakes(loads, bias.double(), gamma):
            if torch.allclose(got.double(), wrong.double(), atol=1e-9):
                print("Hint: " + why + ".")
                return
        print("Hint: c = rank_loads.sum(0); new bias = bias + gamma * sign(mean(c) - c).")
        return
    print("Correct: all ranks sum their counts (one all_reduce), so every rank takes the same step and the "
          "biases stay identical. In the first case each rank alone would push its biases the opposite way.")
