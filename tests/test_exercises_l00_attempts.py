"""Lesson 00: plausible wrong attempts, each with the words its diagnosis must contain (and must not)."""

import pytest
from exercise_helpers import run

from dsv3_edu import ModelConfig
from dsv3_edu.accounting import count_parameters
from dsv3_edu.exercises import l00_welcome as ex

C = count_parameters(ModelConfig.deepseek_v3())

FRACTION = [  # answer, words
    ((C["active"] + C["mtp_active"]) / (C["total"] + C["mtp"]), "counted the MTP module"),
    (37 / 671, "rounded headline"),
    (36.7 / 671, "README"),
    (100 * C["active"] / C["total"], "percentage"),
]

MOE_LAYER = [  # attempt, words
    (lambda c: (c.n_routed_experts + c.n_shared_experts) * 3 * c.hidden_size * c.moe_intermediate_size,
     "router is missing"),
    (lambda c: (c.n_routed_experts + c.n_shared_experts) * 2 * c.hidden_size * c.moe_intermediate_size
     + c.n_routed_experts * c.hidden_size, "three matrices"),
    (lambda c: c.n_routed_experts * 3 * c.hidden_size * c.moe_intermediate_size + c.n_routed_experts * c.hidden_size,
     "shared expert(s) are missing"),
    (lambda c: (c.num_experts_per_tok + c.n_shared_experts) * 3 * c.hidden_size * c.moe_intermediate_size
     + c.n_routed_experts * c.hidden_size, "ACTIVE part"),
]


@pytest.mark.parametrize("answer,words", FRACTION)
def test_active_fraction_attempts(capsys, answer, words):
    ok, out = run(capsys, ex.check_active_fraction, answer)
    assert not ok and words in out, out


@pytest.mark.parametrize("attempt,words", MOE_LAYER)
def test_moe_layer_attempts(capsys, attempt, words):
    ok, out = run(capsys, ex.check_moe_layer_params, attempt)
    assert not ok and words in out, out
