"""Generation: cached greedy decoding equals recomputing everything; speculative decoding with MTP drafts
returns exactly greedy's tokens whatever the drafts are (trap 14), and its statistics add up."""

from pathlib import Path

import pytest
import torch

from dsv3_edu import generate, load_pretrained, speculative_generate
from dsv3_edu.config import ModelConfig
from dsv3_edu.data import ByteTokenizer, documents, load_corpus
from dsv3_edu.model import DeepSeekV3

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "tiny-dsv3"


def make_model(seed=0, **overrides) -> DeepSeekV3:
    torch.manual_seed(seed)
    return DeepSeekV3(ModelConfig.tiny(initializer_range=0.1, **overrides)).eval()


@torch.no_grad()
def greedy_without_cache(model, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, model(ids, mtp=False).logits[:, -1:].argmax(-1)], dim=1)
    return ids


# --------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("impl", ["naive", "absorbed"])
def test_greedy_with_cache_equals_recomputing(impl):
    model = make_model()
    prompt = torch.randint(0, 260, (2, 6))
    out = generate(model, prompt, 12, attn_impl=impl)
    assert out.shape == (2, 18) and torch.equal(out[:, :6], prompt)
    assert torch.equal(out, greedy_without_cache(model, prompt, 12))


def test_eos_stops_batch_one_and_pads_finished_rows():
    model = make_model()
    prompt = torch.randint(0, 260, (2, 5))
    free = generate(model, prompt, 15)
    eos = int(free[0, 5 + 3])  # row 0 produces it at its 4th new token
    out = generate(model, prompt[:1], 15, eos_token_id=eos)
    first = (free[0, 5:] == eos).nonzero()[0].item()
    assert torch.equal(out[0], free[0, : 5 + first + 1])  # stops right after the first eos, eos included

    both = generate(model, prompt, 15, eos_token_id=eos)
    ends = []
    for row in range(2):
        new = free[row, 5:]
        hit = (new == eos).nonzero()
        ends.append(hit[0].item() + 1 if len(hit) else 15)
    assert both.shape[1] == 5 + max(ends)  # until every row is done
    for row in range(2):
        assert torch.equal(both[row, : 5 + ends[row]], free[row, : 5 + ends[row]])
        assert (both[row, 5 + ends[row]:] == eos).all()  # finished rows padded with eos


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = make_model()
    prompt = torch.randint(0, 260, (2, 4))
    a = generate(model, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(model, prompt, 10))
    assert torch.equal(generate(model, prompt, 10, temperature=0.7, top_k=1), generate(model, prompt, 10))


def test_generate_leaves_training_mode_alone():
    model = make_model().train()
    generate(model, torch.randint(0, 260, (1, 3)), 4)
    assert model.training
    assert all(m.mlp.tokens_per_expert.sum() == 0 for m in model.model.layers[1:])  # no loads counted


def test_generate_errors():
    model = make_model()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, torch.zeros(1, 500, dtype=torch.long), 100)
    with pytest.raises(ValueError, match="batch, positions"):
        generate(model, torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="batch 1"):
        speculative_generate(model, torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="no MTP module"):
        speculative_generate(make_model(num_nextn_predict_layers=0), torch.zeros(1, 3, dtype=torch.long), 3)


# ---------------------------------------------------------------------- speculative decoding
@pytest.mark.parametrize("impl", ["naive", "absorbed"])
@pytest.mark.parametrize("D", [1, 2])
def test_speculative_equals_greedy_random_model(impl, D):
    model = make_model(seed=D, num_nextn_predict_layers=D)
    for seed in range(3):
        prompt = torch.randint(0, 260, (1, 3 + 4 * seed), generator=torch.Generator().manual_seed(seed))
        out, stats = speculative_generate(model, prompt, 30, attn_impl=impl)
        assert torch.equal(out, generate(model, prompt, 30, attn_impl=impl))
        assert stats.new_tokens == 30 and stats.drafts_accepted <= stats.drafts_proposed
        assert stats.main_forwards == 1 + stats.drafts_proposed
        assert 30 <= 1 + stats.drafts_proposed + stats.drafts_accepted <= 31  # the last bonus token may be cut
    assert torch.equal(speculative_generate(model, prompt, 0, return_stats=False), prompt)


def with_planted_drafts(model, reference, correct_every):
    """Replace the MTP draft by the true next-next token on every `correct_every`-th call, else by a wrong one.

    The MTP module's cache holds positions 0..m-1 after a call; its last position drafts x_{m+1}.
    """
    original = model.mtp_forward
    L = model.config.num_hidden_layers
    calls = []

    def planted(depth, h_prev, next_ids, cache=None, **kw):
        h, logits = original(depth, h_prev, next_ids, cache=cache, **kw)
        m = cache.seq_len(L)
        target = int(reference[0, m + 1]) if m + 1 < reference.shape[1] else 0
        calls.append(m)
        token = target if len(calls) % correct_every == 0 else (target + 1) % logits.shape[-1]
        logits = logits.clone()
        logits[0, -1] = -1e4
        logits[0, -1, token] = 1e4
        return h, logits

    model.mtp_forward = planted
    return calls


@pytest.mark.parametrize("correct_every, rate", [(1, 1.0), (10**9, 0.0), (2, None)])
def test_speculative_verifies_every_draft(correct_every, rate):
    """Perfect drafts: 2 tokens per step. Always-wrong drafts: never accepted (trap 14), still greedy's output."""
    model = make_model()
    prompt = torch.randint(0, 260, (1, 5))
    reference = generate(model, prompt, 40)
    with_planted_drafts(model, reference, correct_every)
    out, stats = speculative_generate(model, prompt, 40, trace=True)
    assert torch.equal(out, reference)
    if rate is not None:
        assert stats.acceptance_rate == rate
    if rate == 1.0:
        assert stats.main_forwards == 1 + 20 and stats.tokens_per_forward == pytest.approx(40 / 21)
        assert stats.sources[:5] == ["main", "draft", "main", "draft", "main"]
    if rate == 0.0:
        assert stats.main_forwards == 40 and stats.tokens_per_forward == 1.0 and set(stats.sources) == {"main"}
    # The trace adds up: every step adds what it says, accepted drafts are the main model's choice.
    assert len(stats.trace) == stats.drafts_proposed
    assert sum(s["accepted"] for s in stats.trace) == stats.drafts_accepted
    assert 1 + sum(len(s["added"]) for s in stats.trace) >= 40
    for s in stats.trace:
        assert s["accepted"] == (s["draft"] == s["main"]) and s["added"][0] == s["main"]
        assert int(reference[0, s["position"] + 1]) == s["main"]


def test_speculative_eos():
    model = make_model()
    prompt = torch.randint(0, 260, (1, 5))
    free = generate(model, prompt, 20)
    eos = int(free[0, 5 + 6])
    reference = generate(model, prompt, 20, eos_token_id=eos)
    with_planted_drafts(model, free, 1)  # accepted drafts: eos may arrive as the first of two tokens
    out, stats = speculative_generate(model, prompt, 20, eos_token_id=eos)
    assert torch.equal(out, reference) and stats.new_tokens == reference.shape[1] - 5


@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="the shipped model is not trained yet")
def test_shipped_model_speculative_equals_greedy():
    model = load_pretrained(SHIPPED)
    tok = ByteTokenizer()
    docs = load_corpus("validation")
    accepted = proposed = 0
    for domain in ("prose", "code"):
        prompt = torch.tensor([tok.encode(documents(docs[domain])[0][:40], add_bos=True)])
        out, stats = speculative_generate(model, prompt, 64)
        assert torch.equal(out, generate(model, prompt, 64))
        accepted, proposed = accepted + stats.drafts_accepted, proposed + stats.drafts_proposed
    assert accepted / proposed > 0.5


def test_bench_decode_measures_what_it_says():
    from dsv3_edu.bench.mtp import decode_benchmark, prompts

    model = make_model()
    cases = prompts(1, prompt_bytes=8)[:2]
    r = decode_benchmark(model, cases, 8, 1)
    assert r["identical"] and len(r["per_prompt"]) == 2
    assert 1.0 <= r["tokens_per_forward"] <= 2.0 and 0.0 <= r["acceptance_rate"] <= 1.0
    assert r["speedup"] > 0 and set(r["per_domain"]) == {d for d, _ in cases}
