"""Lesson 10: plausible wrong attempts, each with the words its diagnosis must contain."""

import math

import pytest
from exercise_helpers import run

from dsv3_edu.accounting import count_parameters
from dsv3_edu.exercises import l10_scale as ex


def _context(config, free, batch, n, per_layer=None, extra_layers=0, per_batch=True):
    per_layer = per_layer or config.kv_lora_rank + config.qk_rope_head_dim
    return free // (per_layer * (config.num_hidden_layers + extra_layers) * n * (batch if per_batch else 1))


def _expanded(c):
    return c.num_attention_heads * (c.qk_head_dim + c.v_head_dim)


ATTEMPTS = [  # checker, attempt, words
    (ex.check_gpus_for_weights, lambda c, b, g: count_parameters(c)["total"] * b // g, "rounded down"),
    (ex.check_gpus_for_weights, lambda c, b, g: math.ceil(count_parameters(c)["active"] * b / g), "ACTIVE"),
    (ex.check_max_context, lambda c, f, b, n: _context(c, f, b, n, extra_layers=1), "MTP module's layer"),
    (ex.check_max_context, lambda c, f, b, n: _context(c, f, b, n, per_batch=False), "divide by batch"),
    (ex.check_max_context, lambda c, f, b, n: _context(c, f, b, n, per_layer=_expanded(c)), "expanded per-head"),
    (ex.check_mla_layer_parameters,
     lambda c: ex.solution_mla_layer_parameters(c) - c.kv_lora_rank - (c.q_lora_rank or 0), "RMSNorm weights"),
    (ex.check_mla_layer_parameters,
     lambda c: ex.solution_mla_layer_parameters(c) + (c.num_attention_heads - 1) * c.qk_rope_head_dim * c.hidden_size,
     "ONE key shared by all heads"),
]


@pytest.mark.parametrize("check,attempt,words", ATTEMPTS)
def test_wrong_attempts_get_the_right_diagnosis(capsys, check, attempt, words):
    ok, out = run(capsys, check, attempt)
    assert not ok and words in out, out
