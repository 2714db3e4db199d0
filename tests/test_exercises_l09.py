"""Lesson 09 checkers: accept the solutions, explain the typical mistakes, never crash on a stub."""

import torch
from exercise_helpers import run, stub

from dsv3_edu import DeepSeekV3
from dsv3_edu.balance import LoadTracker
from dsv3_edu.exercises import l09_end_to_end as ex
from dsv3_edu.generate import sample_next
from dsv3_edu.mla import LatentCache
from dsv3_edu.train import preset


def test_stubs_do_not_crash(capsys):
    for checker in (ex.check_cache_bytes, ex.check_busiest_experts, ex.check_sample):
        ok, out = run(capsys, checker, stub)
        assert not ok and "Not done yet" in out


# ------------------------------------------------------------------------------------ cache bytes
def test_cache_bytes_solution_matches_a_real_cache():
    config, _ = preset("smoke")
    torch.manual_seed(0)
    model = DeepSeekV3(config).eval()
    cache = LatentCache(config.num_hidden_layers + 1)
    with torch.no_grad():
        model.backbone(torch.randint(256, (1, 7)), cache=cache)
        model.backbone(torch.randint(256, (1, 1)), cache=cache)
    assert cache.nbytes() == ex.solution_cache_bytes(config, 8, torch.float32)


def test_cache_bytes(capsys):
    ok, out = run(capsys, ex.check_cache_bytes, ex.solution_cache_bytes)
    assert ok and "384,000 bytes" in out  # 1,000 x 4 layers x (32 + 16) x 2

    def size(c, dtype):
        return torch.empty((), dtype=dtype).element_size()

    slips = {
        "MTP module's layer": lambda c, n, dt: n * (c.num_hidden_layers + 1) * (c.kv_lora_rank + c.qk_rope_head_dim)
        * size(c, dt),
        "forgot the rope key": lambda c, n, dt: n * c.num_hidden_layers * c.kv_lora_rank * size(c, dt),
        "EXPANDED cache": lambda c, n, dt: n * c.num_hidden_layers * c.num_attention_heads
        * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * size(c, dt),
        "number of heads": lambda c, n, dt: n * c.num_hidden_layers * c.num_attention_heads
        * (c.kv_lora_rank + c.qk_rope_head_dim) * size(c, dt),
        "number of VALUES": lambda c, n, dt: n * c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim),
        "that is one layer": lambda c, n, dt: n * (c.kv_lora_rank + c.qk_rope_head_dim) * size(c, dt),
        "2 bytes per value": lambda c, n, dt: n * c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 2,
    }
    for message, fn in slips.items():
        ok, out = run(capsys, ex.check_cache_bytes, fn)
        assert not ok and message in out, (message, out)
    ok, out = run(capsys, ex.check_cache_bytes, lambda c, n, dt: None)
    assert not ok and "forget `return`" in out
    ok, out = run(capsys, ex.check_cache_bytes, lambda c, n, dt: "many")
    assert not ok and "whole number" in out
    ok, out = run(capsys, ex.check_cache_bytes, lambda c, n, dt: 3)
    assert not ok and "expected 384,000 bytes" in out
    ok, out = run(capsys, ex.check_cache_bytes, lambda c, n, dt: torch.tensor(ex.solution_cache_bytes(c, n, dt)))
    assert ok


# ------------------------------------------------------------------------------------ busiest expert
def test_busiest_experts(capsys):
    ok, out = run(capsys, ex.check_busiest_experts, ex.solution_busiest_experts)
    assert ok and "[1, 0, 4]" in out
    fake = ex._fake_tracker()
    assert fake.loads.argmax(-1).tolist() == [5, 1, 3]
    ok, out = run(capsys, ex.check_busiest_experts, lambda t, d: t.domain_loads[d].argmax(-1))  # a tensor is fine
    assert ok
    cases = {
        "ALL domains": lambda t, d: t.loads.argmax(-1).tolist(),
        "LEAST busy": lambda t, d: t.domain_loads[d].argmin(-1).tolist(),
        "another domain": lambda t, d: t.domain_loads["prose"].argmax(-1).tolist(),
        "one number": lambda t, d: int(t.domain_loads[d].argmax()),
        "token counts": lambda t, d: t.domain_loads[d].max(-1).values,
        "one per expert": lambda t, d: t.domain_loads[d].argmax(0).tolist(),
        "forget `return`": lambda t, d: None,
    }
    for message, fn in cases.items():
        ok, out = run(capsys, ex.check_busiest_experts, fn)
        assert not ok and message in out, (message, out)


def test_busiest_experts_on_a_real_tracker(capsys):
    config, _ = preset("smoke")
    torch.manual_seed(0)
    model = DeepSeekV3(config).eval()
    tracker = LoadTracker(model)
    with torch.no_grad():
        model(torch.randint(256, (2, 16)))
    tracker.update(["arithmetic", "prose"])
    ok, out = run(capsys, ex.check_busiest_experts, ex.solution_busiest_experts, tracker)
    assert ok and "On the shipped model" in out and "mtp.0.mlp" in out


# ------------------------------------------------------------------------------------ sampling
def test_sample(capsys):
    ok, out = run(capsys, ex.check_sample, ex.solution_sample)
    assert ok and "within 0.03" in out
    ok, out = run(capsys, ex.check_sample, lambda lg, t, k, g: sample_next(lg, t, k, g))  # the package's
    assert ok

    def no_top_k(lg, t, k, g):
        return lg.argmax(-1) if t == 0 else torch.multinomial((lg / t).softmax(-1), 1, generator=g).squeeze(-1)

    def times_t(lg, t, k, g):
        return lg.argmax(-1) if t == 0 else ex.solution_sample(lg * t * t, t, k, g)

    def no_temperature(lg, t, k, g):
        return lg.argmax(-1) if t == 0 else ex.solution_sample(lg * t, t, k, g)

    def smallest(lg, t, k, g):
        if t == 0:
            return lg.argmax(-1)
        if k is not None:
            kth = lg.topk(k, dim=-1, largest=False).values[:, -1:]
            lg = lg.masked_fill(lg > kth, float("-inf"))
        return torch.multinomial((lg / t).softmax(-1), 1, generator=g).squeeze(-1)

    cases = {
        "outside the top 3": no_top_k,
        "softmax(logits x T)": times_t,
        "temperature was not applied": no_temperature,
        "k SMALLEST": smallest,
        "Shape (4000, 1)": lambda lg, t, k, g: lg.argmax(-1, keepdim=True),
        "looks like probabilities": lambda lg, t, k, g: lg.softmax(-1),
        "must be greedy": lambda lg, t, k, g: torch.multinomial(lg.softmax(-1), 1, generator=g).squeeze(-1),
        "forget `return`": lambda lg, t, k, g: None,
    }
    for message, fn in cases.items():
        ok, out = run(capsys, ex.check_sample, fn)
        assert not ok and message in out, (message, out)
    ok, out = run(capsys, ex.check_sample, lambda lg, t, k, g: lg.argmax(-1) if t == 0 else lg / t)
    assert not ok and "integer ids" in out
