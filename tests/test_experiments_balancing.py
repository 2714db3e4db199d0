"""Experiments balancing (lesson 06), moe_granularity (lesson 05) and break_it: --quick runs, the pieces
they rest on (the proportional bias update, the specialization metric, the equal-cost arms, each fault),
and the kept results."""

import math

import pytest
import torch

import dsv3_edu.experiments as experiments
from dsv3_edu.balance import update_bias
from dsv3_edu.config import ModelConfig
from dsv3_edu.experiments import balancing, break_it, moe_granularity, runner
from dsv3_edu.moe import MoE


def _quick(name, arms=None):
    res = runner.run_experiment(name, arms=arms, quick=True, progress=False)
    assert list(res["arms"]) == (arms or list(experiments.module(name).ARMS))
    for arm, a in res["arms"].items():
        assert a["seeds"] == [0] and len(a["values"]) == 1 and math.isfinite(a["values"][0]), arm
    return res


def test_balancing_quick_run():  # one arm per balance mode (the other arms differ only in a number)
    res = _quick("balancing", ["none", "aux_1e-2", "loss_free", "loss_free_seq", "proportional_1e-2"])
    assert res["settings"]["train"]["steps"] == balancing.QUICK_TRAIN["steps"]
    for a in res["arms"].values():
        assert 0 <= a["extra"]["maxvio_global"][0] and 0 <= a["extra"]["specialization"][0] <= 1
    assert res["arms"]["none"]["extra"]["bias_range"][0] == [0.0, 0.0]  # nothing moves the bias without balancing


def test_moe_granularity_quick_run():
    res = _quick("moe_granularity")
    for arm, a in res["arms"].items():
        n = a["extra"]["n_params"][0]
        assert n["experts"] == 3 * 64 * moe_granularity.TOTAL_WIDTH * 2, arm  # equal total expert parameters
        assert n["experts_activated"] == 3 * 64 * moe_granularity.ACTIVE_WIDTH * 2, arm  # and activated
        loads = a["extra"]["domain_loads"][0]
        assert len(loads["prose"]) == 2 and len(loads["prose"][0]) == moe_granularity.ARMS[arm]["n_routed_experts"]


def test_break_it_quick_run():
    res = _quick("break_it")
    arms = res["arms"]
    assert arms["group_mask_zero"]["extra"]["shift_changes_correct_loss_by"][0] < 1e-5  # the shift is harmless
    assert arms["group_mask_zero"]["values"][0] > 0.1 and arms["half_split_rope"]["values"][0] > 0.1
    assert arms["unverified_drafts"]["extra"]["verified_differ"][0] == 0  # verification keeps greedy's output
    for arm, a in arms.items():
        assert a["extra"]["effect"] == [break_it.ARMS[arm]["effect"]]


def test_proportional_bias_update_follows_its_formula():
    moe = MoE(ModelConfig.tiny(n_routed_experts=4, n_group=1, topk_group=1))
    moe.tokens_per_expert.copy_(torch.tensor([10, 30, 20, 20]))  # mean 20
    update_bias(moe, gamma=0.1, rule="proportional")
    assert moe.gate.e_score_correction_bias.tolist() == pytest.approx([0.05, -0.05, 0.0, 0.0])
    assert moe.tokens_per_expert.sum() == 0
    with pytest.raises(ValueError, match="rule='both'"):
        update_bias(moe, gamma=0.1, rule="both")


def test_trainer_mode_loss_free_proportional_takes_proportional_steps():
    from dsv3_edu.train import preset, train

    gamma = 1e-2
    mc, tc = preset("smoke", steps=5, balance="loss_free_proportional", gamma=gamma, record_routing=True,
                    device="cpu")
    _, history = train(mc, tc, progress=False)
    previous = torch.zeros_like(torch.tensor(history[0]["bias"]))
    for record in history:
        bias, loads = torch.tensor(record["bias"]), torch.tensor(record["loads"], dtype=torch.float64)  # (L, E)
        mean = loads.mean(-1, keepdim=True)
        torch.testing.assert_close((bias - previous).double(), gamma * (mean - loads) / mean, atol=1e-6, rtol=0)
        previous = bias


def test_specialization_is_zero_for_imbalanced_but_unspecialized_routing():
    # expert 0 takes 70% of every domain's tokens: busy, but it sees the corpus' domain mix
    mix = {"prose": [[70, 20, 10]], "code": [[140, 40, 20]]}
    score, lift = moe_granularity.specialization(mix)
    assert score == pytest.approx(0.0, abs=1e-12)
    assert lift[0] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    # one expert per domain: routing tells the domain exactly
    score, lift = moe_granularity.specialization({"prose": [[50, 0]], "code": [[0, 50]]})
    assert score == pytest.approx(1.0)
    assert lift[0] == [[2.0, 0.0], [0.0, 2.0]]  # each expert sees its domain twice as often as the corpus


def test_specialization_by_hand():
    # prose 30 tokens: 20 to expert 0, 10 to expert 1; code 10 tokens: all to expert 1. N = 40
    counts = {"prose": [[20, 10]], "code": [[0, 10]]}
    q = [30 / 40, 10 / 40]
    joint = [[20 / 40, 10 / 40], [0, 10 / 40]]
    load = [20 / 40, 20 / 40]
    mi = sum(joint[d][i] * math.log(joint[d][i] / (q[d] * load[i])) for d in range(2) for i in range(2) if joint[d][i])
    h = -sum(p * math.log(p) for p in q)
    assert moe_granularity.specialization(counts)[0] == pytest.approx(mi / h)
    with pytest.raises(ValueError, match="at least two domains"):
        moe_granularity.specialization({"prose": [[1, 2]]})


def test_the_faulty_gate_differs_from_the_real_one_only_by_its_fault():
    from dsv3_edu.moe import Gate

    torch.manual_seed(0)
    gate = Gate(ModelConfig.tiny(n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2))
    gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, 8))
    x = torch.randn(64, gate.hidden_size)
    right = gate(x)
    same = break_it._faulty_gate_forward()(gate, x)  # no fault switched on: identical
    for a, b in zip(right, same):
        assert torch.equal(a, b)
    idx, leaked, _ = break_it._faulty_gate_forward(leak_bias=True)(gate, x)
    assert torch.equal(idx, right[0]) and not torch.allclose(leaked, right[1])  # same experts, other weights
    gate.e_score_correction_bias.sub_(2.0)  # s + b < 0: the 0.0 mask now beats every kept expert
    idx, _, _ = break_it._faulty_gate_forward(zero_mask=True)(gate, x)
    assert not torch.equal(idx, gate(x)[0])


@pytest.mark.parametrize("name", ["balancing", "moe_granularity", "break_it"])
def test_kept_results(name):
    path = experiments.results_path(name)
    if not path.exists():
        pytest.skip(f"{path} not recorded yet")
    res = experiments.load(name)
    mod = experiments.module(name)
    assert list(res["arms"]) == list(mod.ARMS) and res["settings"] == mod.settings(False)
    for arm, a in res["arms"].items():
        assert len(a["seeds"]) >= 3 and len(a["values"]) == len(a["seeds"]), arm
        mean, std = experiments.mean_std(a["values"])
        assert a["mean"] == pytest.approx(mean) and a["std"] == pytest.approx(std)
        assert all(len(v) == len(a["seeds"]) for v in a["extra"].values()), arm
