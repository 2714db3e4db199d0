"""Auxiliary-loss-free bias update, sequence-wise and auxiliary losses, MaxVio."""

import pytest
import torch
from torch import nn

from dsv3_edu.balance import (
    LoadTracker,
    aux_loss,
    global_loads,
    last_loads,
    max_violation,
    model_aux_loss,
    model_sequence_balance_loss,
    moe_layers,
    named_moe_layers,
    reset_bias,
    sequence_balance_loss,
    update_bias,
)
from dsv3_edu.config import ModelConfig
from dsv3_edu.moe import MoE

torch.set_num_threads(1)


def cfg(**overrides):
    base = dict(hidden_size=16, moe_intermediate_size=8, n_routed_experts=4, num_experts_per_tok=2,
                n_group=2, topk_group=2, n_shared_experts=1)
    base.update(overrides)
    return ModelConfig.tiny(**base)


class TwoLayers(nn.Module):
    """Stands in for the full model: an embedding and two MoE layers with residuals."""

    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(10, c.hidden_size)
        self.layers = nn.ModuleList([MoE(c), MoE(c)])

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = h + layer(h)
        return h


def test_update_bias_moves_exactly_gamma_by_sign():
    moe = MoE(cfg())
    moe.train()
    moe.tokens_per_expert.copy_(torch.tensor([10, 2, 5, 3]))  # mean 5: over, under, equal, under
    moe.gate.e_score_correction_bias.copy_(torch.tensor([0.5, -0.25, 0.125, 0.0]))
    (loads,) = update_bias(moe, gamma=0.01)
    assert torch.equal(loads, torch.tensor([10, 2, 5, 3]))
    expected = torch.tensor([0.5, -0.25, 0.125, 0.0], dtype=torch.float64) + torch.tensor([-0.01, 0.01, 0, 0.01],
                                                                                          dtype=torch.float64)
    assert torch.equal(moe.gate.e_score_correction_bias, expected.float())
    assert moe.tokens_per_expert.sum() == 0  # counts reset after the update
    update_bias(moe, gamma=0.01)  # no tokens since: every c_i equals the mean, nothing moves
    assert torch.equal(moe.gate.e_score_correction_bias, expected.float())


def test_update_bias_uses_the_tokens_routed_since_last_update():
    c = cfg()
    torch.manual_seed(0)
    model = TwoLayers(c).train()
    ids = torch.randint(0, 10, (3, 8))
    model(ids)
    model(ids)
    counts = [torch.bincount(m.last_routing.topk_idx.flatten(), minlength=4) * 2 for m in model.layers]
    loads = update_bias(model, gamma=1e-3)
    assert len(loads) == 2 and all(torch.equal(a, b) for a, b in zip(loads, counts))
    for layer, c_ in zip(model.layers, counts):
        c_ = c_.double()
        expected = (1e-3 * torch.sign(c_.mean() - c_)).float()
        assert torch.equal(layer.gate.e_score_correction_bias, expected)
        assert (expected[c_ > c_.mean()] == -expected.new_tensor(1e-3)).all()


def test_no_update_in_eval_mode():
    c = cfg()
    model = TwoLayers(c)
    model.layers[0].tokens_per_expert.copy_(torch.tensor([9, 1, 1, 1]))
    model.eval()
    assert update_bias(model, 1e-3) == []
    for layer in model.layers:
        assert torch.equal(layer.gate.e_score_correction_bias, torch.zeros(4))
    model(torch.randint(0, 10, (2, 4)))  # eval forwards do not count either
    assert torch.equal(model.layers[0].tokens_per_expert, torch.tensor([9, 1, 1, 1]))


def test_optimizer_and_weight_decay_never_touch_the_bias():
    c = cfg()
    torch.manual_seed(1)
    model = TwoLayers(c).train()
    for layer in model.layers:
        layer.gate.e_score_correction_bias.fill_(0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    out = model(torch.randint(0, 10, (2, 6)))
    (out.square().mean() + model_sequence_balance_loss(model, alpha=0.1)).backward()
    opt.step()
    for layer in model.layers:
        assert torch.equal(layer.gate.e_score_correction_bias, torch.full((4,), 0.3))
    reset_bias(model)
    assert all(layer.gate.e_score_correction_bias.abs().sum() == 0 for layer in model.layers)


def test_bad_arguments():
    model = TwoLayers(cfg()).train()
    for gamma in (0, -1e-3, float("nan"), "0.001"):
        with pytest.raises(ValueError, match="gamma"):
            update_bias(model, gamma)
    with pytest.raises(ValueError, match="No MoE layer"):
        update_bias(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="forward"):
        model_sequence_balance_loss(model, 1e-4)
    model.layers[0].gate.e_score_correction_bias = torch.zeros(5)
    with pytest.raises(ValueError, match="e_score_correction_bias"):
        update_bias(model)
    with pytest.raises(ValueError, match="experts"):
        sequence_balance_loss(torch.rand(1, 3, 4), torch.zeros(1, 3, 2, dtype=torch.long), 5, 2, 1.0)
    with pytest.raises(ValueError, match="k=3"):
        sequence_balance_loss(torch.rand(1, 3, 4), torch.zeros(1, 3, 2, dtype=torch.long), 4, 3, 1.0)
    with pytest.raises(ValueError, match="expert ids"):
        sequence_balance_loss(torch.rand(1, 3, 4), torch.full((1, 3, 2), 4), 4, 2, 1.0)


# Hand-worked example: E=4 experts, K=2, T=2 tokens per sequence, B=2 sequences.
# seq 0: s_0=[.8,.6,.4,.2] (sum 2) -> s'=[.4,.3,.2,.1], picks {0,1};  s_1=[.1,.1,.4,.4] -> same, picks {0,3}
#        P=[.25,.2,.3,.25]; counts=[2,1,0,1]; f = 4/(2*2)*counts = [2,1,0,1]
#        sum f*P = .5 + .2 + 0 + .25 = 0.95
# seq 1: s'_0=[.3,.3,.3,.1] picks {0,1}; s'_1=[.2,.2,.2,.4] picks {0,1}
#        P=[.25,.25,.25,.25]; counts=[2,2,0,0]; f=[2,2,0,0]; sum f*P = 1.0
# sequence-wise loss = alpha * (0.95 + 1.0) / 2 = alpha * 0.975
# pooled over the batch (the aux loss, T=4): P=[.25,.225,.275,.25]; counts=[4,3,0,1]; f=4/(2*4)*counts=[2,1.5,0,.5]
#        sum f*P = .5 + .3375 + 0 + .125 = 0.9625
SCORES = torch.tensor([[[.8, .6, .4, .2], [.1, .1, .4, .4]], [[.3, .3, .3, .1], [.2, .2, .2, .4]]])
TOPK = torch.tensor([[[0, 1], [0, 3]], [[0, 1], [1, 0]]])


def test_sequence_balance_loss_hand_worked():
    loss = sequence_balance_loss(SCORES, TOPK, n_experts=4, k=2, alpha=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * 0.975))
    torch.testing.assert_close(sequence_balance_loss(SCORES[0], TOPK[0], 4, 2, 1.0), torch.tensor(0.95))
    torch.testing.assert_close(aux_loss(SCORES, TOPK, 4, 2, alpha=0.1), torch.tensor(0.1 * 0.9625))
    # perfectly balanced routing with uniform scores gives exactly alpha
    uniform = torch.full((1, 2, 4), 0.5)
    torch.testing.assert_close(sequence_balance_loss(uniform, torch.tensor([[[0, 1], [2, 3]]]), 4, 2, 1.0),
                               torch.tensor(1.0))


def test_model_losses_sum_layers_and_reach_the_router():
    c = cfg()
    torch.manual_seed(2)
    model = TwoLayers(c).train()
    model(torch.randint(0, 10, (3, 5)))
    per_layer = [sequence_balance_loss(m.last_routing.scores, m.last_routing.topk_idx, 4, 2, 1e-2)
                 for m in model.layers]
    loss = model_sequence_balance_loss(model, alpha=1e-2)
    torch.testing.assert_close(loss, per_layer[0] + per_layer[1])
    loss.backward()
    assert all(m.gate.weight.grad.abs().sum() > 0 for m in model.layers)
    aux = model_aux_loss(model, alpha=1e-2)
    assert aux.requires_grad and aux > 0


def test_max_violation():
    torch.testing.assert_close(max_violation(torch.tensor([10, 2, 5, 3])), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(max_violation([4, 4, 4, 4]), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(max_violation(torch.tensor([[10, 2, 5, 3], [6, 6, 3, 5]])),
                               torch.tensor([1.0, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="no token"):
        max_violation(torch.zeros(4))


def test_load_tracker_per_layer_and_domain():
    c = cfg()
    torch.manual_seed(3)
    model = TwoLayers(c)
    assert len(moe_layers(model)) == 2
    assert [n for n, _ in named_moe_layers(model)] == ["layers.0", "layers.1"]
    batches = [(torch.randint(0, 10, (2, 6)), None, ["prose", "code"]) for _ in range(3)]
    tracker = global_loads(model.train(), batches)
    assert model.training  # mode restored
    assert tracker.loads.shape == (2, 4) and tracker.loads.sum() == 3 * 2 * 6 * 2 * 2  # batches*B*T*K*layers
    torch.testing.assert_close(tracker.domain_loads["prose"] + tracker.domain_loads["code"], tracker.loads)
    assert tracker.max_violation().shape == (2,) and tracker.names == ["layers.0", "layers.1"]
    model.eval()
    model(batches[0][0])
    assert last_loads(model).shape == (2, 4) and last_loads(model).sum() == 2 * 6 * 2 * 2
    with pytest.raises(ValueError, match="domain names"):
        LoadTracker(model).update(["prose"])


def test_bias_update_balances_a_skewed_router():
    """[LF] Alg. 1 in miniature: fixed tokens, a router that prefers experts 0 and 1; the bias evens the load."""
    c = cfg(n_routed_experts=8, n_group=1, topk_group=1)
    torch.manual_seed(4)
    moe = MoE(c).train()
    torch.nn.init.normal_(moe.gate.weight, std=0.3)  # a router whose scores differ, as after training
    v = torch.nn.functional.normalize(torch.randn(c.hidden_size), dim=0)
    x = torch.randn(4, 32, c.hidden_size) * 0.5 + v  # every token leans towards v
    with torch.no_grad():
        moe.gate.weight[0] += 1.0 * v
        moe.gate.weight[1] += 0.8 * v
        history = [max_violation(step(moe, x, gamma=0.01)).item() for _ in range(60)]
    assert history[0] > 1.5  # experts 0 and 1 take most tokens at first
    assert max(history[-10:]) < 0.25
    bias = moe.gate.e_score_correction_bias
    assert bias[0] < 0 and bias[1] < 0 and (bias[2:] > 0).all()


def step(moe, x, gamma):
    moe(x)
    return update_bias(moe, gamma)[0]
