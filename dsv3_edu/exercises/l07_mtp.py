"""Lesson 07 exercises: the MTP index arrays, the depth-k loss (and its off-by-one), the combined loss.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import NOT_DONE as _NOT_DONE
from ._common import as_int_list, checker
from ._common import call_learner as _call


def _as_float(x) -> float | None:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    return None


# ----------------------------------------------------------------------------------------------
# Exercise 1: which positions, which input token, which target, for depth k
# ----------------------------------------------------------------------------------------------


def solution_mtp_indices(T, k):
    """Depth k at position i is fed t_{i+k} (with h^{k-1}_i) and predicts t_{i+k+1}; the target must
    exist (i + k + 1 <= T - 1), so i runs over 0 .. T-k-2: T-k-1 positions (none if T <= k + 1)."""
    positions = list(range(max(0, T - k - 1)))
    return positions, [i + k for i in positions], [i + k + 1 for i in positions]


_INDEX_CASES = ((8, 1), (8, 2), (6, 3), (4, 3), (2, 1))


@checker
def check_mtp_indices(fn) -> None:
    """fn(T, k) -> (positions, fed, targets): three lists of token indices (0-based) for MTP depth k."""
    for T, k in _INDEX_CASES:
        got = _call(fn, T, k, hint="return three lists, e.g. `return positions, fed, targets`.")
        if got is _NOT_DONE:
            return
        where = f"T={T}, k={k}"
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            print(f"{where}: return three sequences (positions, fed, targets), not {type(got).__name__}"
                  + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "") + ".")
            return
        pos, fed, tgt = (as_int_list(x) for x in got)
        if pos is None or fed is None or tgt is None:
            print(f"{where}: each of positions, fed, targets must be a list (or 1-D integer tensor) of token indices.")
            return
        want_pos, want_fed, want_tgt = solution_mtp_indices(T, k)
        if not (len(pos) == len(fed) == len(tgt)):
            print(f"{where}: positions, fed and targets must be aligned (one entry per position), "
                  f"got lengths {len(pos)}, {len(fed)}, {len(tgt)}.")
            return
        if fed == tgt and pos:
            print(f"{where}: fed == targets ({fed}). That is the label leak: depth k would be given the embedding "
                  "of the very token it must predict, and its loss falls to ~0 while it learns nothing. "
                  "Depth k is fed t_(i+k) and predicts the token AFTER it, t_(i+k+1).")
            return
        if pos and all(t == p + k for p, t in zip(pos, tgt)):
            print(f"{where}: your targets are t_(i+k), the token depth k is fed (with h^(k-1)_i). Predicting its "
                  "own input leaks the label; the target is one further: t_(i+k+1).")
            return
        if pos and k > 1 and all(f == p + 1 for p, f in zip(pos, fed)):
            print(f"{where}: you feed t_(i+1) at every depth. Depth k is fed t_(i+k): each depth moves one token "
                  "further along the chain (did you forget k?).")
            return
        if pos and all(0 <= p < T for p in pos) and max(tgt) >= T:
            print(f"{where}: target index {max(tgt)} does not exist: the sequence has tokens t_0..t_{T - 1}. "
                  f"Position i needs t_(i+k+1), so the last usable position is T-k-2 = {T - k - 2}.")
            return
        if pos != want_pos:
            print(f"{where}: expected positions {want_pos} (i = 0 .. T-k-2, {len(want_pos)} of them), got {pos}."
                  + (" Start at position 0: the main model's h^0_0 exists." if pos and pos[0] > 0 else ""))
            return
        if fed != want_fed or tgt != want_tgt:
            print(f"{where}: positions are right; expected fed {want_fed} (i+k) and targets {want_tgt} (i+k+1), "
                  f"got fed {fed} and targets {tgt}.")
            return
    print("Correct: depth k at position i is fed t_(i+k) and predicts t_(i+k+1), for i = 0..T-k-2 "
          "(e.g. T=8, k=2: positions 0..4, fed 2..6, targets 3..7).")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 2: the depth-k loss from the model's logits and Hugging Face labels (the off-by-one)
# ----------------------------------------------------------------------------------------------


def solution_depth_loss(mtp_logits_k, labels, k):
    """mtp_logits_k (B, T-k, V), position i predicting t_{i+k+1}; labels (B, T) = the input ids.
    The last position (i = T-k-1) has no target in this block: drop it."""
    logits = mtp_logits_k[:, :-1]  # (B, T-k-1, V)
    targets = labels[:, k + 1 :]  # (B, T-k-1): t_{k+1} .. t_{T-1}
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def _loss_cases():
    gen = torch.Generator().manual_seed(7)
    B, T, V = 2, 9, 11
    labels = torch.randint(V, (B, T), generator=gen)
    out = []
    for k in (1, 2):
        logits = torch.randn(B, T - k, V, generator=gen) * 2
        out.append((logits, labels, k))
    return out


def _ce(logits, targets, reduction="mean"):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction=reduction)


@checker
def check_depth_loss(fn) -> None:
    """fn(mtp_logits_k (B, T-k, V), labels (B, T), k) -> the mean cross-entropy of depth k (a scalar)."""
    for logits, labels, k in _loss_cases():
        T = labels.shape[1]
        want = float(solution_depth_loss(logits, labels, k))
        got = _call(fn, logits, labels, k, hint=f"logits are (B, T-k, V) = {tuple(logits.shape)} and labels "
                    f"(B, T) = {tuple(labels.shape)}: slice both to the T-k-1 = {T - k - 1} positions that have "
                    "a target before calling F.cross_entropy.")
        if got is _NOT_DONE:
            return
        value = _as_float(got)
        if value is None:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            print(f"Return one number (a 0-d tensor), the mean over positions, not {shape}.")
            return
        if abs(value - want) <= 1e-4 * max(1.0, abs(want)):
            continue
        # Typical slips, computed on the same inputs.
        n = T - k - 1
        slips = {
            "leak": _ce(logits[:, :-1], labels[:, k:-1]),
            "main_shift": _ce(logits[:, :-1], labels[:, 1 : 1 + n]),
            "front": _ce(logits[:, 1:], labels[:, k + 1 :]),
            "sum": _ce(logits[:, :-1], labels[:, k + 1 :], reduction="sum"),
        }
        texts = {
            "leak": f"you compared position i with labels[:, k:] = t_(i+{k}): the token depth {k} is FED. That is the "
                    "label leak (its loss would fall to ~0). Depth k predicts t_(i+k+1): use labels[:, k+1:].",
            "main_shift": "you used the main model's shift (labels[:, 1:]): depth k predicts k tokens further, "
                          "t_(i+k+1), so the targets are labels[:, k+1:].",
            "front": "you dropped the first position instead of the last: logits[:, i] predicts t_(i+k+1), so "
                     "logits[:, :-1] pairs with labels[:, k+1:] (the last position's target is past the block).",
            "sum": "that is the sum over positions; the loss is the mean (F.cross_entropy's default).",
        }
        for name, slip in slips.items():
            if abs(value - float(slip)) <= 1e-4 * max(1.0, abs(float(slip))):
                print(f"k={k}: expected {want:.4f}, got {value:.4f}: {texts[name]}")
                return
        print(f"k={k}: expected {want:.4f}, got {value:.4f}. Pair logits[:, :-1] (positions 0..T-k-2) with "
              "labels[:, k+1:] and take the mean cross-entropy.")
        return
    print("Correct: depth k's logits[:, :-1] pair with labels[:, k+1:] (position i predicts t_(i+k+1)), "
          "exactly what DeepSeekV3.forward computes for out.mtp_losses[k-1].")
    return


# ----------------------------------------------------------------------------------------------
# Exercise 3: the combined loss ([V3] eq 25)
# ----------------------------------------------------------------------------------------------


def solution_total_loss(main_loss, mtp_losses, mtp_lambda):
    """L = L_main + lambda / D * sum_k L_MTP^k: the main loss keeps weight 1."""
    if len(mtp_losses) == 0:
        return main_loss
    return main_loss + mtp_lambda / len(mtp_losses) * sum(mtp_losses)


_TOTAL_CASES = (  # (main, [mtp per depth], lambda)
    (2.0, [3.0], 0.3),
    (1.5, [2.5, 3.5], 0.3),
    (1.2, [2.0, 2.4, 3.1], 0.1),
    (1.7, [], 0.3),
)


@checker
def check_total_loss(fn) -> None:
    """fn(main_loss, mtp_losses (a list, one per depth), mtp_lambda) -> L_main + lambda/D sum_k L_MTP^k."""
    for main, mtp, lam in _TOTAL_CASES:
        main_t, mtp_t = torch.tensor(main), [torch.tensor(m) for m in mtp]
        want = float(solution_total_loss(main_t, mtp_t, lam))
        got = _call(fn, main_t, mtp_t, lam, hint="with no MTP module (D = 0, an empty list) the loss is the main "
                    "loss." if not mtp else "")
        if got is _NOT_DONE:
            return
        value = _as_float(got)
        if value is None:
            print(f"Return one number (a float or 0-d tensor), not {type(got).__name__}.")
            return
        if abs(value - want) <= 1e-5:
            continue
        D = len(mtp)
        where = f"main={main}, mtp={mtp}, lambda={lam}"
        s = sum(mtp)
        if D and abs(value - ((1 - lam) * main + lam * s / D)) <= 1e-5:
            print(f"{where}: expected {want:.4f}, got {value:.4f}. That is (1-lambda) L_main + lambda L_MTP, a "
                  "convex mix that shrinks the main loss's weight to 1-lambda. [V3] eq 25 ADDS the MTP term: "
                  "L_main keeps weight 1.")
        elif D > 1 and abs(value - (main + lam * s)) <= 1e-5:
            print(f"{where}: expected {want:.4f}, got {value:.4f}: you forgot to divide by D={D}. The MTP weight is "
                  "lambda/D per depth, so lambda sets the total MTP weight whatever the depth.")
        elif D and abs(value - lam * s / D) <= 1e-5:
            print(f"{where}: expected {want:.4f}, got {value:.4f}: that is the MTP term alone; add L_main.")
        elif D and abs(value - (main + s / D)) <= 1e-5:
            print(f"{where}: expected {want:.4f}, got {value:.4f}: you forgot lambda (the weight of the MTP term).")
        else:
            print(f"{where}: expected {want:.4f} = {main} + {lam}/{D} x {s:.1f}, got {value:.4f}." if D else
                  f"{where}: expected {want:.4f} (no MTP module: just the main loss), got {value:.4f}.")
        return
    print("Correct: L = L_main + lambda/D sum_k L_MTP^k; e.g. 1.5 + 0.3/2 x (2.5 + 3.5) = 2.4000.")
    return
