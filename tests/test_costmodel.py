"""The attention cost model: counts match the formulas by hand and torch's FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dsv3_edu.bench.mla import roofline_decode_seconds
from dsv3_edu.config import ModelConfig
from dsv3_edu.costmodel import (
    H800,
    PATHS,
    attention_flops,
    bench_machine,
    decode_step_bytes,
    decode_step_cost,
    query_key_pairs,
)
from dsv3_edu.mla import absorbed_attention, expand_kv, expanded_attention, naive_attention

V3 = ModelConfig.deepseek_v3()
H, C, D, R, V = 128, 512, 128, 64, 128


def measured_flops(path, T, S, B=1):
    """torch's own count of the matmul FLOPs, on meta tensors (no memory, no time) at DeepSeek-V3 sizes."""
    meta = dict(device="meta")
    q_nope, q_r = torch.empty(B, H, T, D, **meta), torch.empty(B, H, T, R, **meta)
    c_kv, k_r = torch.empty(B, S, C, **meta), torch.empty(B, S, R, **meta)
    w = torch.empty(H, D + V, C, **meta)
    w_uk, w_uv = w[:, :D], w[:, D:]
    with FlopCounterMode(display=False) as counter:
        if path == "expanded":  # the cache holds K, V already; only the T new tokens are expanded
            expand_kv(c_kv[:, -T:], k_r[:, -T:], w_uk, w_uv)
            k, v = torch.empty(B, H, S, D + R, **meta), torch.empty(B, H, S, V, **meta)
            expanded_attention(torch.cat((q_nope, q_r), -1), k, v, 0.1)
        else:
            (naive_attention if path == "naive" else absorbed_attention)(q_nope, q_r, c_kv, k_r, w_uk, w_uv, 0.1)
    return counter.get_total_flops()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T,S,B", [(1, 4096, 1), (1, 1000, 3), (16, 16, 1), (7, 300, 2)])
def test_flops_match_torch_flop_counter(path, T, S, B):
    # torch counts full T x S score matrices (the mask only hides them): compare with non-causal pairs
    assert attention_flops(V3, T, S, path, batch=B, causal=False) == measured_flops(path, T, S, B)


def test_decode_formulas_by_hand():
    S = 4096
    assert attention_flops(V3, 1, S, "absorbed") == 2 * H * (D * C + S * (2 * C + R) + C * V)
    assert attention_flops(V3, 1, S, "naive") == 2 * S * C * H * (D + V) + 2 * H * S * (D + R + V)
    assert attention_flops(V3, 1, S, "expanded") == 2 * C * H * (D + V) + 2 * H * S * (D + R + V)
    b = decode_step_bytes(V3, S, "absorbed", batch=2, bytes_per_value=2)
    assert b == {"cache": 2 * S * 576 * 2, "weights": H * 256 * C * 2, "intermediate": 0,
                 "total": 2 * S * 576 * 2 + H * 256 * C * 2}
    e = decode_step_bytes(V3, S, "expanded", bytes_per_value=2)
    assert e["cache"] == S * 40960 * 2 and e["intermediate"] == 0
    n = decode_step_bytes(V3, S, "naive", bytes_per_value=4)
    assert n["cache"] == S * 576 * 4 and n["intermediate"] == 2 * S * 40960 * 4
    cost = decode_step_cost(V3, S, "absorbed", bytes_per_value=2)
    assert cost.intensity == pytest.approx(cost.flops / cost.bytes)
    assert cost.seconds(H800) == max(cost.bytes / 3.35e12, cost.flops / 990e12)
    assert decode_step_cost(V3, S, "expanded", bytes_per_value=2).bound(H800) == "memory"


@pytest.mark.parametrize("S", [1024, 8192])
def test_matches_the_benchmarks_roofline_without_the_new_token(S):
    machine = bench_machine()
    bw, gf = machine.bandwidth / 1e9, machine.flops / 1e9
    expanded_values = S * H * (D + R + V)  # the benchmark's timed work, written out by hand (fp32)
    absorbed_bytes = 4 * (S * (C + R) + H * (D + V) * C)  # latent cache + W^UK, W^UV
    absorbed_flops = 2 * H * (D * C + S * (C + R) + S * C + C * V)
    by_hand = {"expanded": max(4 * expanded_values / bw, 2 * expanded_values / gf) / 1e9,
               "absorbed": max(absorbed_bytes / bw, absorbed_flops / gf) / 1e9}
    bench = roofline_decode_seconds(V3, S, bw, gf)
    for path in ("expanded", "absorbed"):
        ours = decode_step_cost(V3, S, path, bytes_per_value=4, new_token=False).seconds(machine)
        assert ours == pytest.approx(by_hand[path], rel=1e-12) == bench[path]
    full = decode_step_cost(V3, S, "expanded", bytes_per_value=4)
    timed = decode_step_cost(V3, S, "expanded", bytes_per_value=4, new_token=False)
    assert full.flops - timed.flops == 2 * H * C * (D + V) and full.bytes - timed.bytes == 4 * H * (D + V) * C
    assert decode_step_cost(V3, S, "absorbed", new_token=False) == decode_step_cost(V3, S, "absorbed")


def test_pairs():
    assert query_key_pairs(1, 10) == 10 and query_key_pairs(3, 3) == 6 and query_key_pairs(2, 5, causal=False) == 10
    assert query_key_pairs(512, 1024, block=128) == 128 * (640 + 768 + 896 + 1024)
    assert query_key_pairs(512, 1024, block=512) == 512 * 1024
    with pytest.raises(ValueError, match="1 <= T <= S"):
        query_key_pairs(5, 4)
    with pytest.raises(ValueError, match="choose one of"):
        attention_flops(V3, 1, 4, "flash")


def test_bench_machine():
    m = bench_machine()
    assert m.bytes_per_value == 4 and 1e9 < m.bandwidth < 1e13 and m.balance == m.flops / m.bandwidth
    with pytest.raises(FileNotFoundError, match="python -m dsv3_edu.bench mla"):
        bench_machine("/nonexistent/bench.json")
