"""The experiment runner: every (arm, seed) run of one experiment, a progress bar each, a table, a JSON file.

    python -m dsv3_edu.experiments NAME [--arms A,B] [--seeds 0,1,2] [--quick] [--json PATH] [--jobs N] [--force]

What it writes (never silently replacing anything):

- a full run (all arms, the default seeds, no ``--quick``) writes ``data/experiments/NAME.json``; the
  path is checked before the work starts, and an existing file is only replaced with ``--force``;
- ``--json PATH`` writes there instead (same rule for an existing file);
- a partial run (``--arms`` or ``--seeds`` other than the full set) without ``--json`` writes nothing: it
  prints each new value beside the recorded one from data/experiments/NAME.json and their relative
  difference (this is how a kept result is reproduced);
- ``--quick`` (tiny settings, seconds) writes nothing unless ``--json`` is given.

Each run is made deterministic here: ``torch.manual_seed(seed)`` (and Python's ``random``), one thread
(``torch.set_num_threads(1)``) and ``torch.use_deterministic_algorithms(True)``. ``--jobs N`` runs the
(arm, seed) pairs in N spawned processes; each run's value is the same as with ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import queue as queue_module
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..files import OutputPathError, ensure_writable, write_json
from . import EXPERIMENTS, load, mean_std, module, results_path

Progress = Callable[[int, int], None]
DEFAULT_SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)


# ------------------------------------------------------------------------------ helpers for modules


class _CountingData:
    """A training dataset that reports every batch drawn (one per optimizer step) to ``progress``."""

    def __init__(self, data, progress: Progress, total: int):
        self._data, self._progress, self._total, self._done = data, progress, total, 0

    def __getattr__(self, attr: str):
        return getattr(self._data, attr)

    def sample(self, batch_size: int, generator: torch.Generator):
        self._progress(self._done, self._total)
        self._done += 1
        return self._data.sample(batch_size, generator)


def train_run(model_config, train_config, progress: Progress | None = None, **kwargs):
    """``dsv3_edu.train.train`` with its steps reported to ``progress(done, total)`` (no bar of its own).

    Returns (model, history) like ``train``. ``kwargs`` go to ``train`` (``model``, ``val_data``, ...).
    """
    from ..data import BlockDataset
    from ..train import train

    train_data = kwargs.pop("train_data", None) or BlockDataset("train", train_config.block_size)
    if progress is not None:
        train_data = _CountingData(train_data, progress, train_config.steps)
    model, history = train(model_config, train_config, progress=False, train_data=train_data, **kwargs)
    if progress is not None:
        progress(train_config.steps, train_config.steps)
    return model, history


# ------------------------------------------------------------------------------------- one run


def _seed_everything(seed: int) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    torch.manual_seed(seed)


def _call(name: str, arm: str, seed: int, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
    mod = module(name)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    _seed_everything(seed)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        value, extra = mod.run(arm, seed, settings, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    value = float(value)
    extra = dict(extra or {})
    json.dumps(extra)  # fail here, with the arm named, rather than at the end
    return {"arm": arm, "seed": seed, "value": value, "extra": extra, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu}


def _worker(name: str, arm: str, seed: int, settings: dict[str, Any], q) -> dict[str, Any]:
    """One run in a spawned process; progress goes back through the queue ``q``."""
    return _call(name, arm, seed, settings, lambda done, total: q.put((arm, seed, done, total)))


# ------------------------------------------------------------------------------------ the runner


def _parse_arms(mod, arms: list[str] | None) -> tuple[list[str], bool]:
    every = list(mod.ARMS)
    if arms is None:
        return every, False
    arms = list(arms)
    if not arms:
        raise ValueError(f"no arm given: choose among {', '.join(every)}")
    unknown = [a for a in arms if a not in mod.ARMS]
    if unknown:
        raise ValueError(f"{mod.NAME} has no arm {', '.join(map(repr, unknown))}: choose among {', '.join(every)}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms {arms} name an arm twice")
    ordered = [a for a in every if a in arms]
    return ordered, ordered != every


def _parse_seeds(seeds: list[int] | None, default: tuple[int, ...]) -> tuple[list[int], bool]:
    if seeds is None:
        return list(default), False
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seed given: pass seeds such as 0,1,2")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 4294:
            raise ValueError(f"seed {s!r}: seeds are integers in [0, 4294) (the trainer's batch seeding)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} name a seed twice")
    return seeds, sorted(seeds) != sorted(default)


def _output_path(name: str, json_path: str | Path | None, full: bool, force: bool) -> Path | None:
    path = Path(json_path) if json_path is not None else (results_path(name) if full else None)
    if path is None:
        return None
    if path.exists() and not path.is_dir() and not force:
        raise OutputPathError(f"{path} exists: pass --force to replace it, or --json PATH to write elsewhere")
    return ensure_writable(path, what="results")


def _command(name: str, quick: bool, arms: list[str], partial_arms: bool, seeds: list[int], partial_seeds: bool) -> str:
    cmd = f"python -m dsv3_edu.experiments {name}"
    if partial_arms:
        cmd += " --arms " + ",".join(arms)
    if partial_seeds:
        cmd += " --seeds " + ",".join(map(str, seeds))
    return cmd + (" --quick" if quick else "")


def run_experiment(
    name: str, arms: list[str] | None = None, seeds: list[int] | None = None, quick: bool = False,
    json_path: str | Path | None = None, jobs: int = 1, progress: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Run every (arm, seed) of experiment ``name``; return the results dict (see the package docstring).

    Writes it to ``json_path``, or for a full run to data/experiments/NAME.json (checked before the work).
    Adds, for a partial run, ``"recorded"``: {arm: {seed: recorded value}} from the kept file when it has them.
    """
    mod = module(name)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: the number of worker processes must be a positive integer")
    arm_list, partial_arms = _parse_arms(mod, arms)
    default_seeds = tuple(getattr(mod, "QUICK_SEEDS", QUICK_SEEDS) if quick else getattr(mod, "SEEDS", DEFAULT_SEEDS))
    seed_list, partial_seeds = _parse_seeds(seeds, default_seeds)
    full = not (quick or partial_arms or partial_seeds)
    out_path = _output_path(name, json_path, full, force)
    settings = mod.settings(quick)
    json.dumps(settings)

    pairs = [(arm, seed) for seed in seed_list for arm in arm_list]  # seed-major: every arm has seed 0 early
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    bars: dict[tuple[str, int], tqdm] = {}

    def on_progress(arm: str, seed: int, done: int, total: int) -> None:
        key = (arm, seed)
        if key not in bars:
            bars[key] = tqdm(total=total, desc=f"{arm} seed {seed}", disable=not progress, leave=True)
        bar = bars[key]
        bar.total = total
        bar.update(done - bar.n)  # tqdm redraws at most every mininterval

    def finished(record: dict[str, Any]) -> None:
        key = (record["arm"], record["seed"])
        runs[key] = record
        if key in bars:
            bars.pop(key).close()
        print(f"{name} {record['arm']} seed {record['seed']}: {record['value']:.6g} "
              f"({record['seconds']:.1f} s, {record['cpu_seconds']:.1f} s CPU)", flush=True)

    started = time.perf_counter()
    if jobs == 1:
        for arm, seed in pairs:
            finished(_call(name, arm, seed, settings, lambda d, t, a=arm, s=seed: on_progress(a, s, d, t)))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            q = manager.Queue()
            pending = {pool.submit(_worker, name, arm, seed, settings, q): (arm, seed) for arm, seed in pairs}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        on_progress(*q.get_nowait())
                    except queue_module.Empty:
                        break
                for future in done:
                    arm, seed = pending.pop(future)
                    try:
                        finished(future.result())
                    except Exception as exc:
                        for f in pending:
                            f.cancel()
                        raise RuntimeError(f"{name}: run arm={arm!r} seed={seed} failed: {exc}") from exc
    for bar in bars.values():
        bar.close()

    results: dict[str, Any] = {
        "experiment": name,
        "question": mod.QUESTION,
        "metric": mod.METRIC,
        "higher_is_better": bool(mod.HIGHER_IS_BETTER),
        "command": _command(name, quick, arm_list, partial_arms, seed_list, partial_seeds),
        "settings": settings,
        "arms": {},
        "std": "sample standard deviation over seeds (ddof=1); null with one seed",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "seconds": round(time.perf_counter() - started, 1),
    }
    for arm in arm_list:
        records = [runs[(arm, s)] for s in seed_list]
        values = [r["value"] for r in records]
        mean, std = mean_std(values)
        keys = list(records[0]["extra"])
        results["arms"][arm] = {
            "seeds": seed_list, "values": values, "mean": mean, "std": std,
            "extra": {k: [r["extra"].get(k) for r in records] for k in keys},
            "arm_settings": mod.ARMS[arm],
            "seconds": [round(r["seconds"], 2) for r in records],
            "cpu_seconds": [round(r["cpu_seconds"], 2) for r in records],
        }
    if not full and not quick and out_path is None:
        results["recorded"] = _recorded(name, settings, arm_list, seed_list)
    if out_path is not None:
        write_json(out_path, results)
    print_table(results)
    if "recorded" in results:
        print_comparison(results)
    if out_path is not None:
        print(f"wrote {out_path}")
    elif not full:
        print("(a partial or --quick run: nothing written; pass --json PATH to keep it)")
    return results


def _recorded(name: str, settings: dict[str, Any], arms: list[str], seeds: list[int]) -> dict[str, dict[int, float]]:
    try:
        kept = load(name)
    except FileNotFoundError:
        print(f"(no recorded results in {results_path(name)} to compare with)")
        return {}
    if kept.get("settings") != settings:
        print(f"note: the settings in {results_path(name)} differ from this code's; the values need not agree")
    out: dict[str, dict[int, float]] = {}
    for arm in arms:
        a = kept["arms"].get(arm)
        if a is None:
            continue
        out[arm] = {s: v for s, v in zip(a["seeds"], a["values"]) if s in seeds}
    return out


def print_table(results: dict[str, Any]) -> None:
    """Arm, number of seeds, mean, sample std and every value."""
    rows = []
    for arm, a in results["arms"].items():
        std = "n/a" if a["std"] is None else f"{a['std']:.4g}"
        rows.append((arm, str(len(a["values"])), f"{a['mean']:.5g}", std, " ".join(f"{v:.5g}" for v in a["values"])))
    header = ("arm", "seeds", "mean", "std (ddof=1)", "values")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{results['experiment']}: {results['metric']} "
          f"({'higher' if results['higher_is_better'] else 'lower'} is better)")
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def print_comparison(results: dict[str, Any]) -> None:
    """Each new value beside the recorded one and their relative difference."""
    print("\nrecorded vs new (relative difference |new - recorded| / |recorded|):")
    for arm, a in results["arms"].items():
        kept = results["recorded"].get(arm, {})
        for seed, value in zip(a["seeds"], a["values"]):
            if seed not in kept:
                print(f"  {arm} seed {seed}: new {value:.8g}, nothing recorded")
                continue
            old = kept[seed]
            rel = abs(value - old) / abs(old) if old else abs(value - old)
            print(f"  {arm} seed {seed}: recorded {old:.8g}, new {value:.8g}, relative difference {rel:.2e}")


# ---------------------------------------------------------------------------------- command line


def _csv(kind: Callable[[str], Any], what: str):
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            example = "0,1,2" if kind is int else "a,b"
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list, such as {example}") from None
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv3_edu.experiments",
                                     description="Run one experiment's arms and seeds; print a table; keep a JSON.")
    parser.add_argument("name", help=f"the experiment: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--arms", type=_csv(str, "--arms"), help="comma-separated arms (default: all)")
    parser.add_argument("--seeds", type=_csv(int, "--seeds"), help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, seconds (writes nothing without --json)")
    parser.add_argument("--json", help="write the results here (default: data/experiments/NAME.json for a full run)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing results file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        run_experiment(args.name, arms=args.arms, seeds=args.seeds, quick=args.quick, json_path=args.json,
                       jobs=args.jobs, progress=not args.no_progress, force=args.force)
    except (ValueError, OutputPathError) as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
