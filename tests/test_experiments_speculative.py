"""The speculative experiment: repetition flags, the acceptance profile, the cost formula, a quick run.

Timings are not reproducible, so only the deterministic parts are compared between runs (never a timing)."""

import pytest
import torch

from dsv3_edu import DeepSeekV3, load_pretrained
from dsv3_edu.data import ByteTokenizer
from dsv3_edu.experiments import speculative as exp
from dsv3_edu.generate import speculative_generate

QUICK = exp.settings(quick=True)


def test_repeats_ngram_by_hand():
    tokens = [1, 2, 3, 1, 2, 3, 4, 2, 3]
    # bigrams ending at 3..8: (3,1) (1,2)* (2,3)* (3,4) (4,2) (2,3)*  (* seen earlier)
    assert exp.repeats_ngram(tokens, start=3, n=2) == [False, True, True, False, False, True]
    assert exp.repeats_ngram(tokens, start=0, n=3) == [False, False, False, False, False, True, False, False, False]
    assert exp.repeats_ngram([5, 5, 5, 5], start=0, n=1) == [False, True, True, True]


def test_prompt_sets_are_disjoint_held_out_documents():
    a, b = exp.prompt_set(0, 3), exp.prompt_set(1, 3)
    assert [d for d, _ in a] == [d for d in ("prose", "arithmetic", "code", "csv") for _ in range(3)]
    assert all(ids.shape == (1, 33) and int(ids[0, 0]) == ByteTokenizer.bos_id for _, ids in a)
    prompts = [tuple(i[0].tolist()) for _, i in a + b]
    assert len(set(prompts)) == len(prompts)  # no prompt twice, within or across seeds


def test_acceptance_profile_counts_every_draft_once():
    model = load_pretrained(exp.SHIPPED)
    prompts = exp.prompt_set(0, 1)[:2]
    profile = exp.acceptance_profile(model, prompts, 70)
    drafts = accepted = 0
    for _, ids in prompts:
        _, stats = speculative_generate(model, ids, 70)
        drafts += stats.drafts_proposed
        accepted += stats.drafts_accepted
    by_position = profile["drafts_by_position"]
    # drafts for a token past the last new one (the final step may overshoot) are not counted
    assert drafts - len(prompts) <= sum(by_position.values()) <= drafts
    assert sum(by_position.values()) == profile["drafts_in_repeats"] + profile["drafts_outside_repeats"]
    assert set(by_position) == {"0-31", "32-63", "64+"} and by_position["64+"] > 0
    assert profile["identical"] is True
    assert abs(profile["acceptance"] - accepted / drafts) < 0.05
    assert 0 <= profile["repeat_fraction_n16"] <= 1


def test_cost_formula():
    costs = {"t1": 10.0, "t2": 12.0, "t_draft1": 3.0, "t_draft2": 4.0}
    assert exp.predicted_speedup(costs, 0.0) == pytest.approx(10 / 15)
    assert exp.predicted_speedup(costs, 1.0) == pytest.approx(20 / 16)
    s = exp.cost_summary(costs)
    assert s["forward_ratio"] == 1.2 and s["draft_ratio"] == 0.3
    assert s["break_even_acceptance"] == pytest.approx((12 + 0.85 * 4 + 0.15 * 3) / 10 - 1)
    a = s["break_even_acceptance"]  # at the break-even acceptance with the 0.85 step cost: speed-up 1
    assert (1 + a) * 10 / (12 + 0.85 * 4 + 0.15 * 3) == pytest.approx(1.0)


def test_width_config_scales_the_shipped_shape():
    shipped = load_pretrained(exp.SHIPPED).config
    assert exp.width_config(128).to_hf() == shipped.to_hf()
    wide = exp.width_config(1024)
    assert (wide.num_attention_heads, wide.kv_lora_rank, wide.moe_intermediate_size) == (32, 256, 512)
    dense = exp.width_config(512, dense=True)
    assert not any(dense.is_moe_layer(i) for i in range(dense.num_hidden_layers))


def test_step_costs_are_positive():
    torch.manual_seed(0)
    model = DeepSeekV3(exp.width_config(128))
    context = torch.randint(0, 260, (1, 24))
    costs = exp.step_costs(model, context, repeats=2, attn_impl="absorbed")
    assert set(costs) == {"t1", "t2", "t_draft1", "t_draft2"} and all(v > 0 for v in costs.values())
    lin = exp.linear_costs(64, repeats=2)
    assert lin["ratio_linear"] == lin["linear2"] / lin["linear1"] and lin["stream2"] > 0


def test_quick_run_deterministic_parts():
    value, extra = exp.run("tiny_dsv3", 0, QUICK, None)
    assert value > 0 and extra["identical"] is True
    assert set(extra["absorbed"]) >= {"t1", "t2", "t_draft1", "forward_ratio", "speedup_at_0.85"}
    deterministic = ("acceptance", "acceptance_by_position", "repeat_fraction_n16", "acceptance_in_repeats",
                     "acceptance_outside_repeats", "drafts_by_position")
    _, again = exp.run("tiny_dsv3", 0, QUICK, None)
    assert {k: again[k] for k in deterministic} == {k: extra[k] for k in deterministic}
    _, other = exp.run("tiny_dsv3", 1, QUICK, None)  # another prompt set
    assert other["acceptance_by_position"] != extra["acceptance_by_position"]
    for arm in exp.ARMS:
        if arm != "tiny_dsv3":
            v, e = exp.run(arm, 0, QUICK, None)
            assert v > 0 and e["parameters"] > 0 and "naive" in e and "ratio_stream" in e["linear"]
