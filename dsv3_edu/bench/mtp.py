"""Speculative decoding with the MTP module vs plain greedy decoding, on the shipped tiny model.

    python -m dsv3_edu.bench mtp [--json PATH] [--quick] [--model DIR]

Prompts are the starts of held-out documents (the corpus' validation split, 3 per domain). For each
prompt both decoders produce the same number of new tokens (256; --quick: 64) on one thread; the
speculative output must equal greedy's token for token. Reported:

- ``identical``: speculative == greedy on every prompt;
- ``acceptance_rate``: accepted drafts / drafts, pooled over prompts;
- ``tokens_per_forward``: new tokens per main-model forward, pooled (greedy: 1);
- ``speedup``: greedy wall time / speculative wall time, best of 3 runs per prompt, median over prompts;
  ``speedup_cpu_time``: the same with this process' CPU time, which other programs on a busy machine
  do not inflate;
- ``by_attn_impl``: the same for both MLA paths (both decoders always use the same path). The top-level
  numbers are those of the checkpoint's own path (``attn_impl`` of its config: "naive" by default);
  ``identical`` covers both;
- ``train_tokens_per_s``: a few steps of dsv3_edu.train on the tiny-dsv3 preset, data setup excluded.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from ..checkpoint import load_pretrained
from ..config import DATA_DIR
from ..data import DOMAINS, ByteTokenizer, documents, load_corpus
from ..generate import generate, speculative_generate
from . import parse_args, write_json
from .timing import timed

SHIPPED = DATA_DIR / "tiny-dsv3"
TARGETS = {"identical": True, "acceptance_rate": 0.6, "speedup": 1.3}


def prompts(per_domain: int, prompt_bytes: int = 32) -> list[tuple[str, torch.Tensor]]:
    """(domain, (1, T) ids): <bos> + the first ``prompt_bytes`` bytes of validation documents."""
    tok, corpus = ByteTokenizer(), load_corpus("validation")
    out = []
    for domain in DOMAINS:
        for doc in documents(corpus[domain])[:per_domain]:
            ids = tok.encode(doc, add_bos=True)[: 1 + prompt_bytes]
            out.append((domain, torch.tensor([ids])))
    return out


def decode_benchmark(model, cases, new_tokens: int, repeats: int, attn_impl: str | None = None) -> dict:
    """Both decoders on every prompt; best of ``repeats`` wall times per prompt and decoder."""
    generate(model, cases[0][1], 8, attn_impl=attn_impl)  # warm up
    speculative_generate(model, cases[0][1], 8, attn_impl=attn_impl)
    rows = []
    for domain, ids in cases:
        t_greedy, t_spec, c_greedy, c_spec = [], [], [], []
        for _ in range(repeats):  # alternate, so a slow moment hits both
            t, c, greedy = timed(generate, model, ids, new_tokens, attn_impl=attn_impl)
            t_greedy.append(t)
            c_greedy.append(c)
            t, c, (spec, stats) = timed(speculative_generate, model, ids, new_tokens, attn_impl=attn_impl)
            t_spec.append(t)
            c_spec.append(c)
        rows.append({
            "domain": domain, "identical": bool(torch.equal(greedy, spec)),
            "greedy_s": min(t_greedy), "speculative_s": min(t_spec), "speedup": min(t_greedy) / min(t_spec),
            "speedup_cpu_time": min(c_greedy) / min(c_spec),
            "drafts_proposed": stats.drafts_proposed, "drafts_accepted": stats.drafts_accepted,
            "main_forwards": stats.main_forwards, "new_tokens": stats.new_tokens,
            "acceptance_rate": stats.acceptance_rate, "tokens_per_forward": stats.tokens_per_forward,
        })

    def pooled(sel):
        proposed = sum(r["drafts_proposed"] for r in sel)
        return {
            "acceptance_rate": sum(r["drafts_accepted"] for r in sel) / proposed if proposed else 0.0,
            "tokens_per_forward": sum(r["new_tokens"] for r in sel) / sum(r["main_forwards"] for r in sel),
            "speedup": statistics.median(r["speedup"] for r in sel),
            "speedup_cpu_time": statistics.median(r["speedup_cpu_time"] for r in sel),
        }

    return {
        "identical": all(r["identical"] for r in rows),
        **pooled(rows),
        "greedy_tokens_per_s": statistics.median(new_tokens / r["greedy_s"] for r in rows),
        "speculative_tokens_per_s": statistics.median(new_tokens / r["speculative_s"] for r in rows),
        "per_domain": {d: pooled([r for r in rows if r["domain"] == d]) for d in DOMAINS
                       if any(r["domain"] == d for r in rows)},
        "per_prompt": rows,
    }


def train_throughput(steps: int) -> dict:
    """Tokens/s of dsv3_edu.train on the tiny-dsv3 preset, from the start of step 1's forward to the start of
    step (1 + steps)'s: a forward pre-hook timestamps every training forward, so data setup is not counted."""
    from ..model import DeepSeekV3
    from ..train import preset, train

    model_config, train_config = preset("tiny-dsv3")
    torch.manual_seed(train_config.seed)
    model = DeepSeekV3(model_config)
    starts: list[float] = []
    model.register_forward_pre_hook(lambda module, args: starts.append(time.perf_counter()))
    train(model_config, train_config, progress=False, model=model, stop_at=1 + steps)
    seconds = starts[steps] - starts[0]
    tokens = steps * train_config.batch_size * train_config.block_size
    return {"train_tokens_per_s": tokens / seconds, "train_steps_timed": steps,
            "train_batch_tokens": train_config.batch_size * train_config.block_size,
            "train_seconds_per_step": seconds / steps}


def run(model_dir: Path, per_domain: int, new_tokens: int, repeats: int, train_steps: int) -> dict:
    """Both MLA paths; the top-level numbers are those of the checkpoint's own path (config.attn_impl)."""
    torch.set_num_threads(1)
    model = load_pretrained(model_dir)
    cases = prompts(per_domain)
    default = model.config.attn_impl
    by_impl = {impl: decode_benchmark(model, cases, new_tokens, repeats, attn_impl=impl)
               for impl in (default, *(i for i in ("naive", "absorbed") if i != default))}
    results = dict(by_impl[default])
    results["identical"] = all(r["identical"] for r in by_impl.values())
    results["by_attn_impl"] = {impl: {k: v for k, v in r.items() if k != "per_prompt"} for impl, r in by_impl.items()}
    if train_steps:
        results.update(train_throughput(train_steps))
    results["meets_targets"] = {
        "identical": results["identical"],
        "acceptance_rate": results["acceptance_rate"] >= TARGETS["acceptance_rate"],
        "speedup": results["speedup"] >= TARGETS["speedup"],
    }
    results["targets"] = TARGETS
    results["settings"] = {
        "model": _relative(model_dir), "parameters": sum(p.numel() for p in model.parameters()),
        "new_tokens": new_tokens, "prompts": len(cases), "prompt_tokens": int(cases[0][1].shape[1]),
        "repeats": repeats, "threads": torch.get_num_threads(), "dtype": "float32", "drafts_per_step": 1,
        "attn_impl": default, "torch": torch.__version__, "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    return results


def _relative(path: Path) -> str:
    """The path relative to the repository when it is inside it (so the JSON does not name this machine)."""
    try:
        return str(Path(path).resolve().relative_to(DATA_DIR.parent))
    except ValueError:
        return str(path)


def print_table(r: dict) -> None:
    s = r["settings"]
    print(f"MTP speculative decoding vs greedy: {s['model']}, {s['parameters']:,} parameters, "
          f"{s['prompts']} prompts, {s['new_tokens']} new tokens, {s['threads']} thread")
    head = f"{'domain':>10} | {'acceptance':>10} {'tokens/fwd':>10} {'speedup':>8}"
    print(head)
    print("-" * len(head))
    for domain, d in r["per_domain"].items():
        print(f"{domain:>10} | {d['acceptance_rate']:10.3f} {d['tokens_per_forward']:10.3f} {d['speedup']:7.2f}x")
    print(f"{'all':>10} | {r['acceptance_rate']:10.3f} {r['tokens_per_forward']:10.3f} {r['speedup']:7.2f}x "
          f"(CPU time: {r['speedup_cpu_time']:.2f}x)")
    for impl, b in r.get("by_attn_impl", {}).items():
        print(f"  attn_impl={impl}: acceptance {b['acceptance_rate']:.3f}, speed-up {b['speedup']:.2f}x, greedy "
              f"{b['greedy_tokens_per_s']:.0f} tokens/s, speculative {b['speculative_tokens_per_s']:.0f} tokens/s")
    print(f"identical to greedy on every prompt: {r['identical']}; greedy {r['greedy_tokens_per_s']:.0f} tokens/s, "
          f"speculative {r['speculative_tokens_per_s']:.0f} tokens/s")
    if "train_tokens_per_s" in r:
        print(f"training: {r['train_tokens_per_s']:.0f} tokens/s ({r['train_seconds_per_step']:.2f} s per step "
              f"of {r['train_batch_tokens']} tokens)")
    t = r["targets"]
    print(f"targets: identical, acceptance >= {t['acceptance_rate']}, speedup >= {t['speedup']}x -> "
          + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in r["meets_targets"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.bench mtp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here (e.g. data/bench_mtp.json)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 prompts, 64 new tokens, 2 training steps")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="checkpoint folder (default: the shipped one)")
    args = parse_args(parser, argv)
    if not (args.model / "config.json").exists():
        parser.error(f"no checkpoint in {args.model}: train it with `python -m dsv3_edu.train --preset tiny-dsv3`")
    if args.quick:
        results = run(args.model, per_domain=1, new_tokens=64, repeats=1, train_steps=2)
    else:
        results = run(args.model, per_domain=3, new_tokens=256, repeats=3, train_steps=8)
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return 0
