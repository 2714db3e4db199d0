"""Lesson 08 exercises: the accept rule, expected tokens per forward, one verification step with the cache.

Each ``check_xxx(fn)`` calls your function on a few cases and prints what is wrong, or "Correct: ...".
It returns nothing (so a notebook cell echoes nothing) and never raises on a stub.
``solution_xxx`` is one answer.
"""

from __future__ import annotations

import math

import torch

from ._common import NOT_DONE as _NOT_DONE
from ._common import as_int_list, checker
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


_ACCEPT_CASES = ((42, (42, 7)), (42, (9, 7)), (5, (5, 5)), (5, (6, 5)), (0, (3, 0)))


@checker
def check_accept(fn) -> None:
    """fn(draft: int, main_choices: (int, int)) -> list of the tokens this step appends to the output."""
    for draft, choices in _ACCEPT_CASES:
        got = _call(fn, draft, choices, hint="return a list of token ids, e.g. `return [main_choices[0]]`.")
        if got is _NOT_DONE:
            return
        where = f"draft={draft}, main_choices={choices}"
        toks = as_int_list(got)
        if toks is None:
            print(f"{where}: return a list of token ids (ints), got {type(got).__name__}.")
            return
        want = solution_accept(draft, choices)
        if toks == want:
            continue
        accepted = draft == choices[0]
        if not accepted and toks == [draft, choices[1]]:
            print(f"{where}: you kept the draft although the main model chose {choices[0]} there. That is trap 14, "
                  "\"speculative\" decoding that never verifies: the output is no longer the main model's. "
                  "Accept the draft only if it equals main_choices[0].")
            return
        if not accepted and toks == list(choices):
            print(f"{where}: the draft was rejected, so main_choices[1] is invalid: the main model computed it "
                  f"after reading the wrong draft {draft}. Keep only main_choices[0].")
            return
        if not accepted and draft in toks:
            print(f"{where}: the rejected draft {draft} must not reach the output; append the main model's "
                  f"choice {choices[0]} instead.")
            return
        if accepted and toks == [draft]:
            print(f"{where}: right, but you drop the free token. The draft was accepted, so main_choices[1] is "
                  "the main model's own next token after it: append it too, or a step never yields 2 tokens.")
            return
        if accepted and toks == [choices[1]]:
            print(f"{where}: the accepted draft itself ({draft}) is a new token too; append [draft, main_choices[1]].")
            return
        print(f"{where}: expected {want}, got {toks}.")
        return
    print("Correct: accept the draft only when it equals the main model's own argmax; then the second "
          "position's argmax is valid too and the step yields 2 tokens, else 1.")


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
    V = model.config.vocab_size
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
        if toks != want:
            if wrong and toks[:1] == [draft]:
                print(f"{where}: you kept the wrong draft {draft}; the main model chose {right}. That is trap 14: "
                      "every draft must be checked against the main model's argmax at position m.")
            elif wrong and toks == [right, *toks[1:]] and len(toks) == 2:
                print(f"{where}: after a rejected draft the second argmax was computed after the wrong token: "
                      f"append only {[right]}, got {toks}.")
            elif not wrong and toks == [right]:
                print(f"{where}: the draft was right, so the argmax at position m+1 is valid too: append "
                      f"{want}, got {toks}. Without it speculative decoding never yields 2 tokens per forward.")
            else:
                print(f"{where}: expected {want} (greedy decoding's next tokens), got {toks}. Did the forward use "
                      "the cache? Without it the model sees only these two tokens.")
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
