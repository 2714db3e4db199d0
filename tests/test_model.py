"""The whole model: the MTP shift (trap 11), the shared embedding and head (trap 12), the loss weighting
(trap 13), and cached decoding equal to the full forward."""

import pytest
import torch
import torch.nn.functional as F

from dsv3_edu.config import ModelConfig
from dsv3_edu.mla import LatentCache
from dsv3_edu.model import DeepSeekV3


def make_model(seed=0, **overrides) -> DeepSeekV3:
    torch.manual_seed(seed)
    return DeepSeekV3(ModelConfig.tiny(initializer_range=0.1, **overrides)).eval()


# ------------------------------------------------------------------------------ the MTP shift
def check_mtp_shift(model: DeepSeekV3, ids: torch.Tensor) -> None:
    """Depth k at position i must see h^{k-1}_i and Emb(t_{i+k}) and be scored against t_{i+k+1} ([V3] eq 21-24)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args)) for m in model.mtp]
    try:
        out = model(ids, labels=ids)
    finally:
        for h in hooks:
            h.remove()
    emb = model.model.embed_tokens(ids)  # (B, T, d)
    h_prev = out.hidden_states
    for k, (h_in, emb_in) in enumerate(seen, 1):
        T_k = ids.shape[1] - k
        assert h_in.shape[1] == T_k, f"depth {k} runs on {h_in.shape[1]} positions, expected T - k = {T_k}"
        torch.testing.assert_close(emb_in, emb[:, k:], msg=f"depth {k} at position i must get Emb(t_(i+{k}))")
        torch.testing.assert_close(h_in, h_prev[:, :T_k], msg=f"depth {k} must get h^{k - 1}_i")
        h_prev = model.mtp[k - 1](h_in, emb_in)
        logits = out.mtp_logits[k - 1]
        assert logits.shape[1] == T_k
        by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, k + 1:].reshape(-1))
        torch.testing.assert_close(out.mtp_losses[k - 1], by_hand, msg=f"depth {k}'s target must be t_(i+{k + 1})")


@pytest.mark.parametrize("D", [1, 2])
def test_mtp_shift(D):
    model = make_model(num_nextn_predict_layers=D)
    check_mtp_shift(model, torch.randint(0, 260, (2, 10)))


def test_off_by_one_mtp_fails_the_check(monkeypatch):
    """The leaky variant: depth 1 at i fed Emb(t_{i+2}), the very token it is scored on (trap 11)."""
    model = make_model()
    original = model.mtp_forward

    def leaky(depth, h_prev, next_ids, **kw):
        return original(depth, h_prev, torch.roll(next_ids, -1, dims=1), **kw)

    monkeypatch.setattr(model, "mtp_forward", leaky)
    with pytest.raises(AssertionError, match="Emb"):
        check_mtp_shift(model, torch.randint(0, 260, (2, 10)))


def test_mtp_cannot_learn_what_it_must_not_see():
    """On uniformly random tokens, t_{i+2} is unpredictable from t_{<=i+1}: depth 1's loss stays near ln V.
    The off-by-one variant sees its label and learns to copy it: its loss collapses."""
    torch.manual_seed(0)
    config = ModelConfig.tiny(hidden_size=32, num_hidden_layers=1, first_k_dense_replace=1, vocab_size=16,
                              num_attention_heads=2, q_lora_rank=None, kv_lora_rank=16, intermediate_size=64)
    losses = {}
    for leak in (False, True):
        torch.manual_seed(0)
        model = DeepSeekV3(config).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(25):
            ids = torch.randint(0, 16, (16, 12))
            h0 = model.backbone(ids)
            shift = 2 if leak else 1  # correct: depth 1 at i sees t_{i+1}; leaky: t_{i+2}
            _, logits = model.mtp_forward(1, h0[:, : 12 - 2], ids[:, shift: 12 - 2 + shift])
            loss = F.cross_entropy(logits.reshape(-1, 16), ids[:, 2:].reshape(-1))  # target t_{i+2}
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[leak] = loss.item()
    ln_v = torch.log(torch.tensor(16.0)).item()
    assert losses[False] > 0.9 * ln_v, losses
    assert losses[True] < 0.3 * ln_v, losses


# -------------------------------------------------------------------- shared embedding and head
def test_embedding_and_head_are_shared_not_copied():
    model = make_model(num_nextn_predict_layers=2)
    V, d = model.config.vocab_size, model.config.hidden_size
    main_ptrs = {model.model.embed_tokens.weight.data_ptr(), model.lm_head.weight.data_ptr()}
    for module in model.mtp:
        for name, p in module.named_parameters():
            assert p.shape not in ((V, d), (d, V)), f"MTP owns a {name} of embedding/head size"
            assert p.data_ptr() not in main_ptrs
    # The MTP path calls the main model's own modules.
    used = {"embed": [], "head": []}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, a, o: used["embed"].append(m.weight)),
             model.lm_head.register_forward_hook(lambda m, a, o: used["head"].append(m.weight))]
    model(torch.randint(0, V, (1, 8)))
    for h in hooks:
        h.remove()
    assert len(used["embed"]) == 3 and len(used["head"]) == 3  # main + two depths
    assert all(w.data_ptr() == model.model.embed_tokens.weight.data_ptr() for w in used["embed"])
    assert all(w.data_ptr() == model.lm_head.weight.data_ptr() for w in used["head"])


def test_mtp_loss_trains_the_shared_embedding_and_head():
    model = make_model().train()
    ids = torch.randint(0, 260, (2, 10))
    out = model(ids, labels=ids)
    out.mtp_losses[0].backward()  # the MTP loss alone
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.kv_b_proj.weight.grad.abs().sum() > 0  # through h^0: a causal chain


# ----------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("lam", [0.3, 0.1])
def test_loss_is_main_plus_lambda_over_D_times_sum(lam):
    model = make_model(num_nextn_predict_layers=2)
    ids = torch.randint(0, 260, (3, 11))
    ids_labels = ids.clone()
    ids_labels[0, 4] = -100  # ignored positions are skipped everywhere
    out = model(ids, labels=ids_labels, mtp_lambda=lam)
    V = model.config.vocab_size

    def ce(logits, targets):
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)

    main = ce(out.logits[:, :-1], ids_labels[:, 1:])
    l1 = ce(out.mtp_logits[0][:, :-1], ids_labels[:, 2:])
    l2 = ce(out.mtp_logits[1][:, :-1], ids_labels[:, 3:])
    torch.testing.assert_close(out.main_loss, main)
    torch.testing.assert_close(out.mtp_losses[0], l1)
    torch.testing.assert_close(out.mtp_losses[1], l2)
    torch.testing.assert_close(out.loss, main + lam / 2 * (l1 + l2))  # not (1 - lam) main + lam mtp (trap 13)
    assert not torch.allclose(out.loss, (1 - lam) * main + lam / 2 * (l1 + l2))


# --------------------------------------------------------------------------------- caching
@pytest.mark.parametrize("impl", ["naive", "absorbed"])
@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None, "num_nextn_predict_layers": 2}])
def test_cached_decoding_equals_full_forward(impl, overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, 260, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        assert len(cache.layers) == model.config.num_hidden_layers + len(model.mtp)
        parts = [model(ids[:, :5], cache=cache, attn_impl=impl).logits]  # prefill
        for t in range(5, 12):
            parts.append(model(ids[:, t:t + 1], cache=cache, attn_impl=impl).logits)  # one token at a time
        torch.testing.assert_close(torch.cat(parts, dim=1), full.logits, rtol=1e-5, atol=1e-5)
        assert cache.seq_len(0) == 12 and cache.seq_len(model.config.num_hidden_layers) == 0  # no MTP by default

        # The MTP module decodes with its own cache entries (layer index num_hidden_layers) as well.
        h0 = full.hidden_states
        _, mtp_full = model.mtp_forward(1, h0[:, :-1], ids[:, 1:], attn_impl=impl)
        cache = LatentCache(model.config.num_hidden_layers + len(model.mtp))
        steps = [model.mtp_forward(1, h0[:, :4], ids[:, 1:5], cache=cache, attn_impl=impl)[1]]
        for t in range(4, 11):
            steps.append(model.mtp_forward(1, h0[:, t:t + 1], ids[:, t + 1:t + 2], cache=cache, attn_impl=impl)[1])
        torch.testing.assert_close(torch.cat(steps, dim=1), mtp_full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mtp_full, full.mtp_logits[0], rtol=1e-5, atol=1e-5)
