"""Lesson 04: plausible wrong attempts, each with the words its diagnosis must contain."""

import math

import pytest
import torch
from exercise_helpers import run

from dsv3_edu.exercises import l04_absorption as ex


def _absorb(q, w, rows):
    H, D, C = q.shape[1], q.shape[-1], w.shape[-1]
    w_uk = w[: H * D].view(H, D, C) if rows == "blocks" else w.view(H, -1, C)[:, :D]
    out = torch.einsum("bhtd,hdc->bhtc", q, w_uk)
    return out / math.sqrt(D) if rows == "scaled" else out


def _decode_bytes(path, context, batch, n, expanded_paths=("expanded", "naive"), latent=576):
    return batch * context * n * (128 * (192 + 128) if path in expanded_paths else latent)


ATTEMPTS = [  # checker, attempt, words, words that must not appear (the lesson's own code)
    (ex.check_absorb_query, lambda q, w: _absorb(q, w, "blocks"), "separate the heads first", "view("),
    (ex.check_absorb_query, lambda q, w: _absorb(q, w, "scaled"), "leave the softmax scale out", None),
    (ex.check_fold_output, lambda w_uv, w_o: torch.einsum(
        "ehv,hvc->ehc", w_o.view(w_o.shape[0], w_uv.shape[1], w_uv.shape[0]).transpose(1, 2), w_uv),
     "columns are head by head", None),
    (ex.check_decode_cache_bytes, _decode_bytes, "that is the expanded cache", None),
    (ex.check_decode_cache_bytes, lambda p, c, b, n: _decode_bytes(p, c, b, n, ("expanded",), 512), "rope key",
     None),
    (ex.check_choose_path, lambda T, S: "absorbed", "always answer 'absorbed'", None),
    (ex.check_choose_path, lambda T, S: "naive" if T > 1 else "absorbed", "no fixed threshold", None),
]


@pytest.mark.parametrize("check,attempt,words,never", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words, never):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
    assert never is None or never not in out, out
