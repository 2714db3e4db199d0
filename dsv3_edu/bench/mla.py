"""MLA on this CPU at DeepSeek-V3's attention sizes: decode and prefill, absorbed vs naive vs expanded.

    python -m dsv3_edu.bench mla [--json PATH] [--quick]

One attention layer (128 heads, d_c 512, d_h^R 64, d_h 128, d_c' 1536, d 7168), random fp32
weights, batch 1, one thread. It times the functions the MLA module runs (dsv3_edu.mla):

- decode: one new token against a cache of S tokens. Only the part that depends on the cache is
  compared: scores, softmax, weighted sum; for "absorbed" also the per-step W^UK / W^UV products;
  for "naive" also re-expanding K and V from the whole latent cache; "expanded" reads a cache of
  per-head K and V. The projections every path shares (q, kv latent, rope, W^O) are timed apart.
- prefill: the last chunk of an S-token prompt (chunked prefill, as serving engines do): the chunk's
  queries attend to all S keys, causally within the chunk, in blocks of 128 query rows so that no
  full score matrix is built. A full 8192-token prefill would take minutes on one core.

It also measures streaming memory bandwidth and matmul speed, and predicts the decode speed-up from
them with a roofline (time = max(bytes / bandwidth, flops / matmul speed)).
"""

from __future__ import annotations

import argparse
import platform
from functools import partial
from pathlib import Path

import torch

from ..config import ModelConfig
from ..costmodel import Machine, decode_step_cost
from ..mla import MLA, absorbed_attention, causal_mask, expand_kv, expanded_attention, naive_attention
from . import parse_args, write_json
from .timing import median_seconds

BLOCK = 128  # query rows per block in prefill


def measure_machine(repeats: int = 5) -> tuple[float, float]:
    """(streaming read bandwidth in GB/s, fp32 matmul speed in GFLOP/s), one thread."""
    x = torch.ones(128 * 2**20)  # 512 MiB, far beyond the caches
    bandwidth = x.numel() * 4 / median_seconds(x.sum, repeats) / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gflops = 2 * 2048**3 / median_seconds(lambda: a @ b, repeats) / 1e9
    return bandwidth, gflops


def roofline_decode_seconds(config: ModelConfig, S: int, bandwidth: float, gflops: float) -> dict[str, float]:
    """Predicted cache-dependent decode time per path (dsv3_edu.costmodel's roofline, fp32, without the new
    token's expansion, as this benchmark times it): bandwidth in GB/s, matmul speed in GFLOP/s."""
    machine = Machine("this CPU", bandwidth=bandwidth * 1e9, flops=gflops * 1e9, bytes_per_value=4)
    return {path: decode_step_cost(config, S, path, bytes_per_value=4, new_token=False).seconds(machine)
            for path in ("expanded", "absorbed")}


def _blocks(T: int, S: int):
    """Blocks of query rows among the last T of S positions: (rows, keys the block may see, causal mask)."""
    for i in range(0, T, BLOCK):
        rows = slice(i, min(i + BLOCK, T))
        end = S - T + rows.stop
        yield rows, end, causal_mask(rows.stop - i, end)


def prefill_naive(q_nope, q_r, c_kv, k_r, w_uk, w_uv, scale):
    """naive_attention, chunked: expand K, V once for the whole context, then attend block by block."""
    k, v = expand_kv(c_kv, k_r, w_uk, w_uv)  # (1, H, S, D+R), (1, H, S, V)
    q = torch.cat((q_nope, q_r), dim=-1)  # (1, H, T, D+R)
    for rows, end, mask in _blocks(q.shape[2], k.shape[2]):
        expanded_attention(q[:, :, rows], k[:, :, :end], v[:, :, :end], scale, mask)


def prefill_absorbed(q_nope, q_r, c_kv, k_r, w_uk, w_uv, scale):
    """absorbed_attention, block by block against the latent."""
    for rows, end, mask in _blocks(q_nope.shape[2], c_kv.shape[1]):
        absorbed_attention(q_nope[:, :, rows], q_r[:, :, rows], c_kv[:, :end], k_r[:, :end], w_uk, w_uv, scale, mask)


def run(contexts: list[int], chunk: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig.deepseek_v3(attn_impl="absorbed")
    mla = MLA(config).eval()
    w_uk, w_uv, scale = mla.w_uk, mla.w_uv, mla.softmax_scale
    C = config.kv_lora_rank
    bandwidth, gflops = measure_machine()
    times: dict[str, dict[str, float]] = {k: {} for k in ("expanded", "absorbed", "naive")}
    prefill: dict[str, dict[str, float]] = {k: {} for k in ("naive", "absorbed")}
    roofline = {}
    with torch.inference_mode():
        # Shared projections (q, latent, rope, W^O): the same for every path and every context.
        def project(T: int):
            x = torch.randn(1, T, config.hidden_size)
            comp = mla.components(x, torch.arange(T))
            o = torch.randn(1, T, config.num_attention_heads * config.v_head_dim)
            return lambda: (mla.components(x, torch.arange(T)), mla.o_proj(o)), comp

        decode_proj, _ = project(1)
        chunk_proj, chunk_comp = project(chunk)
        projection_ms = {"decode_step": 1e3 * median_seconds(decode_proj, repeats),
                         f"prefill_chunk_{chunk}": 1e3 * median_seconds(chunk_proj, repeats)}
        q_nope, q_r = chunk_comp.q_nope, chunk_comp.q_r  # (1, H, chunk, D), (1, H, chunk, R)
        q1_nope, q1_r = q_nope[:, :, -1:], q_r[:, :, -1:]  # one decoding query
        for S in contexts:
            key = str(S)
            c_kv = mla.kv_a_layernorm(torch.randn(1, S, C))  # a filled latent cache (values do not matter)
            k_r = torch.randn(1, S, config.qk_rope_head_dim)
            args = (c_kv, k_r, w_uk, w_uv, scale)
            times["absorbed"][key] = median_seconds(partial(absorbed_attention, q1_nope, q1_r, *args), 3 * repeats)
            times["naive"][key] = median_seconds(partial(naive_attention, q1_nope, q1_r, *args), repeats)
            k, v = (t.contiguous() for t in expand_kv(c_kv, k_r, w_uk, w_uv))  # an ExpandedKVCache's contents
            q1 = torch.cat((q1_nope, q1_r), dim=-1)
            times["expanded"][key] = median_seconds(partial(expanded_attention, q1, k, v, scale), 3 * repeats)
            del k, v
            few = max(repeats - 2, 1)  # prefill runs take seconds
            prefill["naive"][key] = median_seconds(partial(prefill_naive, q_nope, q_r, *args), few)
            prefill["absorbed"][key] = median_seconds(partial(prefill_absorbed, q_nope, q_r, *args), few)
            roof = roofline_decode_seconds(config, S, bandwidth, gflops)
            roofline[key] = roof["expanded"] / roof["absorbed"]
            print(f"  context {S}: done", flush=True)

    def ratio(a, b):
        return {k: a[k] / b[k] for k in a}

    def ms(d):
        return {k: 1e3 * v for k, v in d.items()}

    per_layer = {"latent": config.kv_lora_rank + config.qk_rope_head_dim,
                 "expanded": config.num_attention_heads * (config.qk_head_dim + config.v_head_dim)}
    return {
        "decode_speedup_absorbed_vs_expanded": ratio(times["expanded"], times["absorbed"]),
        "decode_slowdown_naive_vs_absorbed": ratio(times["naive"], times["absorbed"]),
        "prefill_speedup_naive_vs_absorbed": ratio(prefill["absorbed"], prefill["naive"]),
        "roofline_decode_speedup_absorbed_vs_expanded": roofline,
        "memory_bandwidth_GBps": bandwidth,
        "matmul_GFLOPs": gflops,
        "decode_ms": {k: ms(v) for k, v in times.items()},
        "prefill_ms": {k: ms(v) for k, v in prefill.items()},
        "projection_ms": projection_ms,
        "cache_values_per_token_and_layer": per_layer,
        "settings": {
            "dtype": "float32", "threads": 1, "batch": 1, "contexts": contexts, "prefill_chunk": chunk,
            "prefill_block_rows": BLOCK, "repeats": repeats, "weights": "random",
            "heads": config.num_attention_heads, "kv_lora_rank": C, "q_lora_rank": config.q_lora_rank,
            "qk_nope_head_dim": config.qk_nope_head_dim, "qk_rope_head_dim": config.qk_rope_head_dim,
            "v_head_dim": config.v_head_dim, "hidden_size": config.hidden_size,
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
        },
    }


def print_table(r: dict) -> None:
    s = r["settings"]
    print(f"MLA, one layer at DeepSeek-V3 sizes, {s['dtype']}, batch 1, 1 thread; median ms")
    print(f"machine: {r['memory_bandwidth_GBps']:.1f} GB/s streaming read, {r['matmul_GFLOPs']:.0f} GFLOP/s matmul")
    head = (f"{'context':>8} | {'expanded':>9} {'absorbed':>9} {'naive':>9} | {'abs/exp':>7} {'roofline':>8} "
            f"{'naive/abs':>9} | {'prefill naive':>13} {'absorbed':>9} {'naive x':>7}")
    print("decode: cache-dependent part of one step | prefill: last chunk of", s["prefill_chunk"], "tokens")
    print(head)
    print("-" * len(head))
    d, p = r["decode_ms"], r["prefill_ms"]
    speedup, roof = r["decode_speedup_absorbed_vs_expanded"], r["roofline_decode_speedup_absorbed_vs_expanded"]
    slowdown, prefill = r["decode_slowdown_naive_vs_absorbed"], r["prefill_speedup_naive_vs_absorbed"]
    for k in map(str, s["contexts"]):
        print(
            f"{k:>8} | {d['expanded'][k]:9.2f} {d['absorbed'][k]:9.2f} {d['naive'][k]:9.1f} | "
            f"{speedup[k]:6.2f}x {roof[k]:7.2f}x {slowdown[k]:8.1f}x | "
            f"{p['naive'][k]:13.0f} {p['absorbed'][k]:9.0f} {prefill[k]:6.2f}x"
        )
    proj = ", ".join(f"{k} {v:.1f} ms" for k, v in r["projection_ms"].items())
    print(f"shared projections (every path): {proj}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.bench mla", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here (e.g. data/bench_mla.json)")
    parser.add_argument("--quick", action="store_true", help="smoke run: contexts 256 and 512, small chunk")
    args = parse_args(parser, argv)
    if args.quick:
        results = run([256, 512], chunk=128, repeats=3)
    else:
        results = run([1024, 4096, 8192], chunk=512, repeats=5)
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return 0
