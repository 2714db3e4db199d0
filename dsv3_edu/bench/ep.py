"""Expert parallelism on local processes: output check, dispatch bytes with and without the node limit.

    python -m dsv3_edu.bench ep [--world-size 4] [--max-ranks 2] [--redundant 4] [--json PATH]

Spawns ``--world-size`` processes (torch.multiprocessing, spawn start method, gloo on CPU, nccl when
every rank has a GPU), splits one tiny seeded DeepSeekMoE layer (16 routed experts, K=4, 1 shared,
d=32; ``dsv3_edu.distributed.toy_layer``) and 64 tokens over them and runs the expert-parallel forward
(all_to_all_single dispatch and combine) twice in the same processes: routed with ranks as nodes
(``n_group = W``, ``topk_group = M``) and without the limit. It reports

- ``max_abs_diff_vs_single_process``: the largest difference from the single-process ``MoE``;
- ``bytes_sent_node_limited`` / ``bytes_sent_unlimited``: the dispatch bytes that cross between ranks
  (measured from the split sizes passed to all_to_all_single), the formula's value beside them
  (fp32 hidden states, a token counted once per destination rank, as DeepSeek-V3's dispatch sends
  it), and the bound b * d * N * min(K, M); the combine sends the same bytes back;
- the token-expert pairs per rank, and the largest before and after placing ``--redundant`` copies of
  the most-loaded experts on the least-loaded ranks (a simulation on the node-limited loads).

No timings: the numbers are counts and bytes, the same every run.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch

from .. import distributed as D
from ..files import write_json
from . import parse_args

EXPERTS = 16


def run(world_size: int = 4, max_ranks: int = 2, n_tokens: int = 64, redundant: int | None = None, seed: int = 0,
        ) -> dict[str, Any]:
    """Both EP runs in one set of processes; returns the JSON-ready results."""
    redundant = world_size if redundant is None else redundant
    limited, x = D.toy_layer(world_size, max_ranks, n_tokens, seed)
    unlimited, _ = D.toy_layer(world_size, None, n_tokens, seed)  # same weights and tokens, no node limit
    runs = D.run_expert_parallel_many([(limited, x), (unlimited, x)], world_size)
    config = D._config_of(limited)
    red = D.simulate_redundancy(runs[0].expert_loads, world_size, redundant)

    def bytes_entry(r: D.EPRun) -> dict[str, Any]:
        return {
            "measured": D.off_diagonal(r.bytes_sent),
            "formula": D.off_diagonal(r.bytes_formula),
            "measured_including_own_rank": int(r.bytes_sent.sum()),
            "formula_including_own_rank": int(r.bytes_formula.sum()),
            "bound_including_own_rank": r.bytes_bound,
            "matrix": r.bytes_sent.tolist(),
            "formula_matrix": r.bytes_formula.tolist(),
            "rank_loads": r.rank_loads.tolist(),
            "max_abs_diff": r.max_abs_diff,
        }

    return {
        "meta": {
            "what": "dsv3_edu.bench.ep: one MoE layer split over local processes with all_to_all_single",
            "world_size": world_size, "max_ranks_per_token": max_ranks, "tokens": n_tokens,
            "hidden_size": config.hidden_size, "n_routed_experts": config.n_routed_experts,
            "experts_per_rank": config.n_routed_experts // world_size, "top_k": config.num_experts_per_tok,
            "n_shared_experts": config.n_shared_experts, "bytes_per_value": D.BYTES_FP32, "seed": seed,
            "backend": runs[0].backend, "torch": torch.__version__, "machine": platform.machine(),
            "formula": "bytes(s->t) = 4 * d * #{tokens of rank s with >= 1 expert on rank t}; "
                       "bound: 4 * d * N * min(K, M)",
        },
        "max_abs_diff_vs_single_process": max(r.max_abs_diff for r in runs),
        "bytes_sent_node_limited": bytes_entry(runs[0]),
        "bytes_sent_unlimited": bytes_entry(runs[1]),
        "expert_loads": runs[0].expert_loads.tolist(),
        "redundant_experts": redundant,
        "redundant_copies": [list(c) for c in red.copies],
        "rank_loads_after_redundancy": [round(v, 3) for v in red.rank_loads_after.tolist()],
        "max_rank_load_before_redundancy": red.max_before,
        "max_rank_load_after_redundancy": round(red.max_after, 3),
    }


def table(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [f"EP over {m['world_size']} ranks ({m['backend']}): {m['n_routed_experts']} experts "
             f"({m['experts_per_rank']} per rank), K={m['top_k']}, {m['tokens']} tokens, d={m['hidden_size']}, fp32",
             f"max |EP - single process| = {results['max_abs_diff_vs_single_process']:.2e}", "",
             f"{'routing':22} {'bytes between ranks':>20} {'formula':>9} {'with own rank':>14} {'bound':>7} "
             f"{'max rank load':>14}"]
    for name, key in ((f"node-limited (M={m['max_ranks_per_token']})", "bytes_sent_node_limited"),
                      ("unlimited", "bytes_sent_unlimited")):
        b = results[key]
        lines.append(f"{name:22} {b['measured']:20,} {b['formula']:9,} {b['measured_including_own_rank']:14,} "
                     f"{b['bound_including_own_rank']:7,} {max(b['rank_loads']):14}")
    lines += ["", f"redundant experts ({len(results['redundant_copies'])} copies placed in "
              f"{results['redundant_experts']} slots, node-limited loads): max rank load "
              f"{results['max_rank_load_before_redundancy']:g} -> {results['max_rank_load_after_redundancy']:g} "
              f"token-expert pairs"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.bench ep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=4, help=f"processes (ranks); divides {EXPERTS}")
    parser.add_argument("--max-ranks", type=int, help="M: ranks (nodes) a token may reach (default min(2, W))")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--redundant", type=int, help="slots for extra expert copies (default: one per rank)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results there")
    args = parse_args(parser, argv)  # --json is test-written first
    if args.max_ranks is None:
        args.max_ranks = min(2, max(1, args.world_size))
    try:
        D.toy_config(args.world_size, args.max_ranks)
        if args.tokens < args.world_size:
            raise ValueError(f"--tokens {args.tokens}: give each of the {args.world_size} ranks at least one token")
        if args.redundant is not None and args.redundant < 0:
            raise ValueError(f"--redundant {args.redundant}: give 0 or more extra expert copies")
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    results = run(args.world_size, args.max_ranks, args.tokens, args.redundant, args.seed)
    print(table(results))
    print(f"({time.perf_counter() - start:.0f} s, most of it starting processes)")
    if args.json:
        write_json(args.json, results, quiet=False)
    return 0
