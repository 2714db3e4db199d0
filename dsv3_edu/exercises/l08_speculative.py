"""Lesson 08 exercises: the accept rule, expected tokens per forward, one verification step with the cache.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import math

import torch

from ._common import NOT_DONE as _NOT_DONE
from ._common import as_int_list, checker, diagnose, what_differs
from ._common import call_learner as _call

# ----------------------------------------------------------------------------------------------
# Exercise 1: the accept rule of greedy verification
# ----------------------------------------------------------------------------------------------


def solution_accept(draft, main_choices):
    """The main model ran on [x_m, draft]. main_choices[0] is its argmax at position m (its own x_{m+1});
    main_choices[1] its argmax at m+1, computed as if x_{m+1} = draft. Keep the draft only if it equals
    main_choices[0]; then main_choices[1] is valid too. Otherwise keep only main_choices[0]."""
    if draft == main_choices[0]:
        return [draft, main_choices[1]]
    return [main_choices[0]]


# Every kind of case: d = c0 != c1 (accepted), d = c1 != c0 (rejected), d = c0 = c1 (accepted), d neither.
_ACCEPT_CASES = ((42, (42, 7)), (7, (9, 7)), (5, (5, 5)), (42, (9, 7)), (0, (3, 0)), (3, (3, 0)))

# Typical mistakes, each as the function it is; a diagnosis needs the answers of every case to match one.
_ACCEPT_MISTAKES = (
    (lambda d, c: [d, c[1]],
     "you keep the draft every time, even when the main model chose another token. That is trap 14, "
     "\"speculative\" decoding that never verifies: the output is no longer the main model's. Accept the draft "
     "only if it equals main_choices[0]."),
    (lambda d, c: [d, c[1]] if d == c[1] else [c[0]],
     "you compare the draft with main_choices[1], the main model's choice at position m+1. The draft is a guess "
     "for position m+1's token x_{m+1}, which the main model chose at position m: compare with main_choices[0]."),
    (lambda d, c: [d] if d == c[0] else [c[0]],
     "the accept test is right, but you drop the free token. When the draft is accepted, main_choices[1] is the "
     "main model's own next token after it: append it too, or a step never yields 2 tokens."),
    (lambda d, c: [d, c[1]] if d == c[0] else list(c),
     "on a rejection you keep main_choices[1] too. It is invalid: the main model computed it after reading the "
     "wrong draft. Keep only main_choices[0]."),
    (lambda d, c: [c[1]] if d == c[0] else [c[0]],
     "on an acceptance the draft itself is a new token too: append [draft, main_choices[1]], not only "
     "main_choices[1]."),
)


@checker
def check_accept(fn) -> None:
    """fn(draft: int, main_choices: (int, int)) -> list of the tokens this step appends to the output."""
    results = []
    for draft, choices in _ACCEPT_CASES:
        got = _call(fn, draft, choices, hint="return a list of token ids, e.g. `return [main_choices[0]]`.")
        if got is _NOT_DONE:
            return
        toks = as_int_list(got)
        if toks is None:
            print(f"draft={draft}, main_choices={choices}: return a list of token ids (ints), "
                  f"got {type(got).__name__}.")
            return
        results.append(((draft, choices), toks, solution_accept(draft, choices)))
    if all(got == want for _, got, want in results):
        print("Correct: accept the draft only when it equals the main model's own argmax; then the second "
              "position's argmax is valid too and the step yields 2 tokens, else 1.")
        return
    same = lambda a, b: a == b  # noqa: E731
    text = diagnose(results, _ACCEPT_MISTAKES, same=same)
    if text:
        print("Not yet: " + text)
        return
    print(what_differs(results, lambda case: f"draft={case[0]}, main_choices={case[1]}", same=same))


# ----------------------------------------------------------------------------------------------
# Exercise 2: expected tokens per main forward with k drafts per step
# ----------------------------------------------------------------------------------------------


def solution_tokens_per_forward(alpha, k):
    """k drafts checked in one forward, each accepted with probability alpha, and a draft counts only if
    every draft before it was accepted. The forward always yields the main model's own token, plus
    draft j with probability alpha^j: 1 + alpha + ... + alpha^k."""
    return sum(alpha**j for j in range(k + 1))


_TPF_CASES = ((0.8, 1), (0.85, 1), (0.8, 3), (0.5, 2), (0.0, 2), (1.0, 3))


@checker
def check_tokens_per_forward(fn) -> None:
    """fn(alpha, k) -> expected new tokens per main-model forward (a float)."""
    for alpha, k in _TPF_CASES:
        got = _call(fn, alpha, k, hint="for alpha = 1 every draft is accepted: k + 1 tokens per forward. "
                    "A closed form (1 - a^(k+1)) / (1 - a) divides by zero there.")
        if got is _NOT_DONE:
            return
        where = f"alpha={alpha}, k={k}"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = float(got)
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            print(f"{where}: return one finite number, got {got!r}.")
            return
        want = solution_tokens_per_forward(alpha, k)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if math.isclose(got, 1 + k * alpha, rel_tol=1e-6):
            print(f"{where}: you got 1 + k*alpha = {got:.4f}, expected {want:.4f}. A draft after a rejected one "
                  "is discarded even if it happens to be right: draft j counts only if drafts 1..j all pass, "
                  "probability alpha^j.")
            return
        if math.isclose(got, want - 1, rel_tol=1e-6, abs_tol=1e-9):
            print(f"{where}: you got {got:.4f}, expected {want:.4f}: you forgot the main model's own token. "
                  "Every forward yields at least 1 token (its argmax), accepted drafts come on top.")
            return
        if math.isclose(got, 1 + alpha, rel_tol=1e-6) and k > 1:
            print(f"{where}: 1 + alpha is the answer for one draft; with k = {k} drafts add alpha^2 .. alpha^k.")
            return
        print(f"{where}: expected {want:.4f}, got {got:.4f}.")
        return
    print("Correct: 1 + alpha + ... + alpha^k; one draft at 85% gives 1.85 tokens per forward, "
          "three drafts at 80% give 2.952.")


# ----------------------------------------------------------------------------------------------
# Exercise 3: one verification step with the latent cache
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def solution_verify(model, cache, x_m, draft):
    """The cache holds positions 0..m-1; x_m (the newest token) is not in it yet. One main forward over
    [x_m, draft] writes positions m and m+1; on rejection the entry of the wrong draft (position m+1) goes."""
    m = cache.seq_len()
    h = model.backbone(torch.tensor([[x_m, draft]]), cache=cache)  # (1, 2, d)
    choices = model.lm_head(h[0]).argmax(dim=-1).tolist()  # argmax at positions m and m+1
    if choices[0] == draft:
        return [draft, choices[1]]
    cache.crop(m + 1)  # keep positions 0..m
    return [choices[0]]


def _verify_model():
    from ..config import ModelConfig
    from ..model import DeepSeekV3

    torch.manual_seed(0)
    config = ModelConfig.tiny(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16,
                              kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                              intermediate_size=64, moe_intermediate_size=16, n_routed_experts=4, n_group=2,
                              topk_group=2, num_nextn_predict_layers=0, max_position_embeddings=64)
    return DeepSeekV3(config).eval()


@checker
def check_verify(fn) -> None:
    """fn(model, cache, x_m, draft) -> tokens appended (list of ints); it must leave the cache holding exactly the
    tokens of the output except the newest one. The checker plays the drafter: some drafts are the main model's
    greedy choice, some are wrong, and your function must tell them apart and keep greedy's output."""
    from ..generate import generate

    model = _verify_model()
    prompt = torch.tensor([[257, 72, 105, 33, 32, 77, 105, 97]])  # <bos> "Hi! Mia"
    n_new = 20
    greedy = generate(model, prompt, n_new)[0].tolist()
    with torch.no_grad():
        cache = model.new_cache()
        h = model.backbone(prompt, cache=cache)
        out = prompt[0].tolist() + [int(model.lm_head(h[0, -1]).argmax())]
    writes: list[int] = []  # positions written into the cache by the learner's forward
    update = cache.update

    def counting_update(layer_idx, c_kv, k_r):
        writes.append(c_kv.shape[1])
        return update(layer_idx, c_kv, k_r)

    cache.update = counting_update
    fed: list[list[int]] = []  # the token ids of each forward the learner ran
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: fed.append(args[0].flatten().tolist()))
    try:
        _verify_steps(fn, model, cache, greedy, out, writes, fed)
    finally:
        hook.remove()


def _verify_steps(fn, model, cache, greedy, out, writes, fed) -> None:
    V = model.config.vocab_size
    step = 0
    while len(out) < len(greedy) - 1:
        m = len(out) - 1
        right = greedy[m + 1]
        wrong = step % 3 == 2
        draft = (right + 1 + step) % V if wrong else right
        if cache.seq_len() != m:
            print(f"internal: cache holds {cache.seq_len()} positions before step {step}, expected {m}")
            return
        writes.clear()
        fed.clear()
        got = _call(fn, model, cache, out[-1], draft,
                    hint="run model.backbone(torch.tensor([[x_m, draft]]), cache=cache), take "
                         "model.lm_head(h[0]).argmax(-1), then apply the accept rule.")
        if got is _NOT_DONE:
            return
        where = f"step {step} (x_m at position m = {m}, draft {'wrong' if wrong else 'right'})"
        toks = as_int_list(got)
        if toks is None:
            print(f"{where}: return the appended tokens as a list of ints, got {type(got).__name__}.")
            return
        want = [right] if wrong else [right, greedy[m + 2]]
        length = cache.seq_len()
        if not writes:
            print(f"{where}: the cache did not grow. Run the verification forward with `cache=cache` so the "
                  "positions m and m+1 are written (and attend to everything before them).")
            return
        x_m = out[-1]
        if fed and all(len(ids) == 1 for ids in fed) and (toks != want or len(fed) == 1):
            if fed[0] == [x_m]:
                print(f"{where}: your forward fed only [x_m] (it wrote 1 position). That gives the argmax at m, "
                      "but the draft needs its own position m+1 in the same forward, or the main model's choice "
                      "after it is never computed: feed [[x_m, draft]].")
            else:
                print(f"{where}: your forward fed only [draft] (it wrote 1 position). The model never read x_m, "
                      "which is not in the cache yet (the cache holds positions 0..m-1): feed [[x_m, draft]], "
                      "positions m and m+1.")
            return
        if toks != want:
            if wrong and toks[:1] == [draft]:
                print(f"{where}: you kept the wrong draft {draft}; the main model chose {right}. That is trap 14: "
                      "every draft must be checked against the main model's argmax at position m.")
            elif wrong and toks[:1] == [right] and len(toks) == 2:
                print(f"{where}: after a rejected draft the second argmax was computed after the wrong token: "
                      f"append only {[right]}, got {toks}.")
            elif not wrong and toks == [right]:
                print(f"{where}: the draft was right, so the argmax at position m+1 is valid too: append "
                      f"{want}, got {toks}. Without it speculative decoding never yields 2 tokens per forward.")
            else:
                print(f"{where}: not one of the usual mistakes; expected {want} (greedy decoding's next tokens), "
                      f"got {toks}; your forward wrote {writes[0] if writes else 0} position(s) per layer.")
            return
        out += toks
        if wrong and length == m + 2:
            print(f"{where}: the tokens are right, but the cache still holds the rejected draft at position m+1 "
                  f"({length} positions, want {m + 1}). The next forward would attend to a token that is not in "
                  "the output, and its positions would be off by one: call cache.crop(m + 1).")
            return
        if length != len(out) - 1:
            print(f"{where}: the cache holds {length} positions, want {len(out) - 1} (every token of the output "
                  f"except the newest). " + ("crop(m + 1) keeps positions 0..m; you kept fewer." if length < m + 1
                                             else "Crop only on a rejection."))
            return
        step += 1
    if out != greedy[: len(out)]:
        print("The tokens differ from greedy decoding.")
        return
    print(f"Correct: {step} verification steps, {sum(1 for s in range(step) if s % 3 == 2)} drafts rejected "
          "and cropped; the output equals greedy decoding token for token.")
