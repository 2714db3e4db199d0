"""Lesson 05 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch

from dsv3_edu.exercises import l05_moe as ex
from dsv3_edu.moe import Gate

torch.set_num_threads(1)


def stub(*args):
    raise NotImplementedError("your code here")


def out_of(capsys, checker, arg):
    assert checker(arg) is None  # prints, returns nothing
    return capsys.readouterr().out



def test_group_scores(capsys):
    out = out_of(capsys, ex.check_group_scores, ex.solution_group_scores)
    assert out.startswith("Correct") and "1.15" in out
    view = lambda x, G: x.view(x.shape[0], G, -1)
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x, G).amax(-1))
    assert "MAX" in out and "DeepSeek-V2" in out and "trap 3" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x, G).sum(-1))
    assert "EVERY expert" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x, G).topk(2, -1).values.mean(-1))
    assert "mean of the top-2" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: x.view(x.shape[0], -1, G).topk(2, 1).values.sum(1))
    assert "CONTIGUOUS" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x, G).topk(2, 1).values.sum(1))
    assert "wrong axis" in out and "Expected shape (4, 3)" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x.sigmoid(), G).topk(2, -1).values.sum(-1))
    assert "sigmoid again" in out
    out = out_of(capsys, ex.check_group_scores, lambda x, G: view(x, G).topk(3, -1).values.sum(-1))
    assert "token 0: expected" in out
    assert "forget `return`" in out_of(capsys, ex.check_group_scores, lambda x, G: None)
    assert "raised IndexError" in out_of(capsys, ex.check_group_scores, lambda x, G: x[99])


def test_group_scores_solution_matches_gate():
    """The solution is the rule dsv3_edu.moe.Gate uses: the experts it picks lie in the best groups."""
    from dsv3_edu.config import ModelConfig

    config = ModelConfig.tiny(hidden_size=16, n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    gate = Gate(config)
    torch.nn.init.normal_(gate.weight, std=0.5)
    gate.e_score_correction_bias.copy_(torch.randn(16) * 0.2)
    x = torch.randn(20, 16)
    idx, _, scores = gate(x)
    kept = ex.solution_group_scores(scores + gate.e_score_correction_bias, 4).topk(2, -1).indices  # (N, M)
    assert all(set((row // 4).tolist()) <= set(k.tolist()) for row, k in zip(idx, kept))


def test_gate_weights(capsys):
    out = out_of(capsys, ex.check_gate_weights, ex.solution_gate_weights)
    assert out.startswith("Correct") and "sum 2.5" in out
    leak = lambda s, b, i, c: ((s + b).gather(1, i) / (s + b).gather(1, i).sum(-1, keepdim=True)) * c
    out = out_of(capsys, ex.check_gate_weights, leak)
    assert "leaked" in out and "trap 1" in out and "only SELECTS" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i) * c)
    assert "not normalized" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i) / s.gather(1, i).sum(-1, True))
    assert "routed_scaling_factor" in out and "sum to 1" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i) / s.sum(-1, True) * c)
    assert "ALL experts" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i).softmax(-1) * c)
    assert "softmax" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i)[:, :2])
    assert "Expected shape (5, 3)" in out
    out = out_of(capsys, ex.check_gate_weights, lambda s, b, i, c: s.gather(1, i) / s.gather(1, i).sum(-1, True) * 2)
    assert "expected" in out and "Gather s at topk_idx" in out


def test_gate_weights_solution_matches_gate():
    from dsv3_edu.config import ModelConfig

    config = ModelConfig.tiny(hidden_size=16, n_routed_experts=8, n_group=1, topk_group=1, num_experts_per_tok=3)
    gate = Gate(config)
    torch.nn.init.normal_(gate.weight, std=0.5)
    bias = torch.randn(8) * 0.3
    gate.e_score_correction_bias.copy_(bias)
    idx, w, scores = gate(torch.randn(10, 16))
    torch.testing.assert_close(ex.solution_gate_weights(scores, bias, idx, config.routed_scaling_factor), w)


def test_spot_the_bug(capsys):
    ex.show_spot_the_bug()
    shown = capsys.readouterr().out
    assert "experts [0, 1, 4, 2]" in shown and "sum 2.500" in shown and "E: nothing" in shown
    out = out_of(capsys, ex.check_spot_the_bug, ex.solution_spot_the_bug())
    assert out.startswith("Correct: B") and "[0, 1, 4, 5]" in out
    assert out_of(capsys, ex.check_spot_the_bug, " b ").startswith("Correct")
    assert "UNBIASED s" in out_of(capsys, ex.check_spot_the_bug, "A")
    assert "same groups" in out_of(capsys, ex.check_spot_the_bug, "C")
    assert "normalized" in out_of(capsys, ex.check_spot_the_bug, "D")
    assert "group 1 was dropped" in out_of(capsys, ex.check_spot_the_bug, "e")
    assert "one of the letters" in out_of(capsys, ex.check_spot_the_bug, "F")
    assert "one of the letters" in out_of(capsys, ex.check_spot_the_bug, 2)


def test_spot_the_bug_case_is_what_it_claims():
    """A correct router picks [0, 1, 4, 5]; with 0.0 masking it picks expert 2 of dropped group 1."""
    s = torch.tensor(ex.BUG_SCORES)[None]
    biased = s + ex.BUG_BIAS
    groups = ex.solution_group_scores(biased, 4)
    kept = groups.topk(2, -1).indices[0].tolist()
    assert sorted(kept) == [0, 2]
    assert sorted(biased.view(1, 4, 2).amax(-1).topk(2, -1).indices[0].tolist()) == [0, 2]  # V2 rule: same groups
    mask = torch.zeros(4, dtype=torch.bool)
    mask[kept] = True
    mask = mask.repeat_interleave(2)
    right = biased.masked_fill(~mask, float("-inf")).topk(4, -1).indices[0].tolist()
    wrong = biased.masked_fill(~mask, 0.0).topk(4, -1).indices[0].tolist()
    assert sorted(right) == [0, 1, 4, 5]
    assert wrong[:3] == [0, 1, 4] and wrong[3] in (2, 3, 6, 7)  # a 0.0 of a dropped group beats expert 5
    torch.testing.assert_close(ex.bug_output_weights().sum(), torch.tensor(2.5))
