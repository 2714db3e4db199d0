"""Lesson 10 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import math

import numpy as np
import torch

from dsv3_edu import ModelConfig
from dsv3_edu.accounting import count_parameters, mla_parameters
from dsv3_edu.exercises import l10_scale as ex


def stub(*args):
    raise NotImplementedError("your code here")


def run(capsys, checker, answer):
    assert checker(answer) is None  # prints only: nothing for a notebook cell to echo
    out = capsys.readouterr().out
    return out.startswith("Correct"), out



def test_solutions_agree_with_the_package():
    for (config,) in ex._MLA_CASES:
        assert ex.solution_mla_layer_parameters(config) == mla_parameters(config)
    assert ex.solution_mla_layer_parameters(ModelConfig.deepseek_v3()) == 187_107_328
    assert count_parameters(ModelConfig.deepseek_v3())["attention"] == 61 * 187_107_328


def test_mla_layer_parameters(capsys):
    ok, out = run(capsys, ex.check_mla_layer_parameters, ex.solution_mla_layer_parameters)
    assert ok and "187,107,328" in out and "11,413,547,008" in out

    def no_rope_key(c):
        return ex.solution_mla_layer_parameters(c) - c.hidden_size * c.qk_rope_head_dim

    ok, out = run(capsys, ex.check_mla_layer_parameters, no_rope_key)
    assert not ok and "expected 187,107,328, got 186,648,576" in out and "W^KR" in out

    def no_norms(c):
        return ex.solution_mla_layer_parameters(c) - (c.q_lora_rank or 0) - c.kv_lora_rank

    ok, out = run(capsys, ex.check_mla_layer_parameters, no_norms)
    assert not ok and "RMSNorm weights" in out

    def o_from_qk(c):
        return ex.solution_mla_layer_parameters(c) + c.num_attention_heads * c.qk_rope_head_dim * c.hidden_size

    ok, out = run(capsys, ex.check_mla_layer_parameters, o_from_qk)
    assert not ok and "o_proj reads the heads' outputs" in out

    def only_latent_path(c):  # crashes on q_lora_rank None
        return c.hidden_size * c.q_lora_rank + ex.solution_mla_layer_parameters(c) - c.hidden_size * c.q_lora_rank

    ok, out = run(capsys, ex.check_mla_layer_parameters, only_latent_path)
    assert not ok and "raised TypeError" in out and "one q_proj" in out
    ok, out = run(capsys, ex.check_mla_layer_parameters, lambda c: 7)
    assert not ok and "add up seven tensors" in out
    ok, out = run(capsys, ex.check_mla_layer_parameters, lambda c: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_mla_layer_parameters, lambda c: "many")
    assert not ok and "Return a number, not str" in out


def test_paper_symbols(capsys):
    ok, out = run(capsys, ex.check_paper_symbols, ex.solution_paper_symbols())
    assert ok and "[W^DKV; W^KR]" in out
    answers = ex.solution_paper_symbols()
    answers["model.layers.10.self_attn.kv_a_proj_with_mqa.weight"] = "W^DKV"
    answers["model.layers.10.mlp.gate.weight"] = "b_i"
    answers["model.layers.10.self_attn.o_proj.weight"] = None
    ok, out = run(capsys, ex.check_paper_symbols, answers)
    assert not ok and "not W^DKV" in out and "Half right" in out and "rope key" in out
    assert "not b_i" in out and "centroid" in out and "Still to do: model.layers.10.self_attn.o_proj.weight" in out
    assert "7 of 10 right so far" in out
    answers["model.layers.10.self_attn.o_proj.weight"] = "WO"
    ok, out = run(capsys, ex.check_paper_symbols, answers)
    assert not ok and "'WO'" in out and "not a key of SYMBOL_MENU" in out
    answers = ex.solution_paper_symbols()
    answers["model.layers.10.mlp.gate.e_score_correction_bias"] = "e_i"
    ok, out = run(capsys, ex.check_paper_symbols, answers)
    assert not ok and "only to choose the experts" in out
    ok, out = run(capsys, ex.check_paper_symbols, {**ex.solution_paper_symbols(), "model.layers.10.typo": "W^O"})
    assert not ok and "typo" in out


def test_gpus_for_weights(capsys):
    ok, out = run(capsys, ex.check_gpus_for_weights, ex.solution_gpus_for_weights)
    assert ok and "8 GPUs of 80 GiB" in out
    ok, out = run(capsys, ex.check_gpus_for_weights,
                  lambda c, b, g: np.int64(ex.solution_gpus_for_weights(c, b, g)))  # numpy ints are fine
    assert ok
    ok, out = run(capsys, ex.check_gpus_for_weights,
                  lambda c, b, g: math.ceil(count_parameters(c)["active"] * b / g))
    assert not ok and "expected 8 GPUs, got 1" in out and "ACTIVE" in out and "every expert" in out
    ok, out = run(capsys, ex.check_gpus_for_weights, lambda c, b, g: count_parameters(c)["total"] * b // g)
    assert not ok and "rounded down" in out
    ok, out = run(capsys, ex.check_gpus_for_weights, lambda c, b, g: round(count_parameters(c)["total"] * b / g))
    assert not ok and "nearest" in out
    ok, out = run(capsys, ex.check_gpus_for_weights, lambda c, b, g: count_parameters(c)["total"] * b / g)
    assert not ok and "fraction of a GPU" in out
    ok, out = run(capsys, ex.check_gpus_for_weights,
                  lambda c, b, g: math.ceil(count_parameters(c)["total_with_mtp"] * b / g))
    assert not ok and "MTP module" in out


def test_max_context(capsys):
    ok, out = run(capsys, ex.check_max_context, ex.solution_max_context)
    assert ok and "370,535" in out and "5,210" in out
    ok, out = run(capsys, ex.check_max_context,
                  lambda c, f, b, n: torch.tensor(ex.solution_max_context(c, f, b, n)))  # a 0-d tensor is fine
    assert ok

    def expanded(c, free, batch, n):
        per = c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * c.num_hidden_layers * n
        return free // (per * batch)

    ok, out = run(capsys, ex.check_max_context, expanded)
    assert not ok and "expected 370,535 tokens, got 5,210" in out and "expanded per-head" in out

    def no_rope(c, free, batch, n):
        return free // (c.kv_lora_rank * c.num_hidden_layers * n * batch)

    ok, out = run(capsys, ex.check_max_context, no_rope)
    assert not ok and "rope key" in out

    def no_batch(c, free, batch, n):
        return free // ((c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * n)

    ok, out = run(capsys, ex.check_max_context, no_batch)
    assert not ok and "divide by batch" in out

    def with_mtp(c, free, batch, n):
        return free // ((c.kv_lora_rank + c.qk_rope_head_dim) * (c.num_hidden_layers + 1) * n * batch)

    ok, out = run(capsys, ex.check_max_context, with_mtp)
    assert not ok and "MTP module's layer" in out
    ok, out = run(capsys, ex.check_max_context, lambda c, f, b, n: ex.solution_max_context(c, f, b, n) + 1)
    assert not ok and "no longer fits" in out
