"""Measured evidence for the design choices: seeded experiments whose results the lessons plot.

    python -m dsv3_edu.experiments NAME [--arms A,B] [--seeds 0,1,2] [--quick] [--json PATH] [--jobs N]

Each experiment trains (or measures) every *arm* with every *seed* and keeps the results in
``data/experiments/NAME.json``; the lessons read that file (:func:`load`), plot mean ± std
(:func:`plot`) and print a conclusion computed from the numbers (:func:`summarize`).

The contract of an experiment module ``dsv3_edu/experiments/<name>.py`` (the runner relies on it)::

    NAME = "<name>"
    QUESTION = "..."                 # the question the experiment answers, one sentence
    METRIC = "..."                   # what the value of one run is, with its unit
    HIGHER_IS_BETTER = False
    ARMS: dict[str, dict]            # arm -> the settings that differ between arms (written to the JSON)
    def settings(quick: bool) -> dict                      # everything shared by all arms, JSON-able
    def run(arm: str, seed: int, settings: dict, progress) -> tuple[float, dict]
    # optional: SEEDS = (0, 1, 2) (the default seeds); QUICK_SEEDS = (0,)

``run`` returns (the metric's value, extra per-seed metrics as a JSON-able dict). ``progress`` is a
callable ``progress(done, total)`` that the runner turns into one progress bar per run; call it as the
run advances (for training, :func:`train_run` does). Every (arm, seed) run must be deterministic: the
runner seeds torch with ``seed``, uses one thread and deterministic algorithms, and the result of a run
depends only on (arm, seed, settings), never on which other runs share its process (``--jobs``).

The JSON file (``std`` is the *sample* standard deviation over seeds, ddof=1; null for one seed)::

    {"experiment": NAME, "question": ..., "metric": ..., "higher_is_better": false,
     "command": "python -m dsv3_edu.experiments NAME", "settings": {...},
     "arms": {ARM: {"seeds": [0, 1, 2], "values": [...], "mean": ..., "std": ...,
                    "extra": {KEY: [one value per seed]}, "arm_settings": {...},
                    "seconds": [...], "cpu_seconds": [...]}},
     "std": "sample standard deviation over seeds (ddof=1); null with one seed",
     "versions": {"python": ..., "torch": ...}, "seconds": ...}

Reading them back: :func:`load`, :func:`summarize` (mean ± std per arm, each arm against a baseline),
:func:`conclusion` (that comparison as one sentence), :func:`extra_stats`, :func:`plot` (error bars).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import DATA_DIR

EXPERIMENTS = ("attention", "moe_granularity", "balancing", "mtp", "speculative", "break_it")
RESULTS_DIR = DATA_DIR / "experiments"
REQUIRED = ("NAME", "QUESTION", "METRIC", "HIGHER_IS_BETTER", "ARMS", "settings", "run")


def module(name: str) -> ModuleType:
    """The experiment module ``dsv3_edu.experiments.<name>``, imported on first use, checked against the contract."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}")
    try:
        mod = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise ValueError(f"experiment {name!r} is registered but dsv3_edu/experiments/{name}.py "
                             "does not exist yet") from exc
        raise
    missing = [attr for attr in REQUIRED if not hasattr(mod, attr)]
    if missing:
        raise ValueError(f"dsv3_edu/experiments/{name}.py lacks {', '.join(missing)} "
                         "(see the contract in dsv3_edu.experiments)")
    return mod


def results_path(name: str) -> Path:
    """Where the kept results of experiment ``name`` live: data/experiments/NAME.json."""
    return RESULTS_DIR / f"{name}.json"


def load(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """The results of experiment ``name`` (the kept data/experiments/NAME.json unless ``path`` is given)."""
    if name not in EXPERIMENTS and path is None:
        raise ValueError(f"unknown experiment {name!r}: choose one of {', '.join(EXPERIMENTS)}")
    path = Path(path) if path is not None else results_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m dsv3_edu.experiments {name}` to make it")
    data = json.loads(path.read_text())
    if data.get("experiment") != name:
        raise ValueError(f"{path} holds experiment {data.get('experiment')!r}, not {name!r}")
    return data


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and *sample* standard deviation (ddof=1; None for fewer than two values)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _results(name_or_results: str | dict[str, Any]) -> dict[str, Any]:
    return load(name_or_results) if isinstance(name_or_results, str) else name_or_results


def summarize(
    name_or_results: str | dict[str, Any], baseline: str | None = None, show: bool = True, digits: int = 4,
) -> dict[str, dict[str, Any]]:
    """Mean ± std per arm and, against the ``baseline`` arm, whether each difference exceeds the seed spread.

    A difference counts as *larger than the seed spread* when |mean_arm - mean_base| is more than the sum
    of the two arms' sample standard deviations (a deliberately simple, conservative rule: with 3 seeds it
    is roughly the point where the two ± std bars stop overlapping). Returns {arm: {"mean", "std", "n",
    "diff", "spread", "beyond_spread", "better"}}; ``diff``/``better`` are None for the baseline itself.
    ``show`` prints one line per arm.
    """
    res = _results(name_or_results)
    arms = res["arms"]
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm of {res['experiment']}: {', '.join(arms)}")
    hib = bool(res.get("higher_is_better", False))
    out: dict[str, dict[str, Any]] = {}
    base = arms[baseline] if baseline is not None else None
    for arm, a in arms.items():
        row: dict[str, Any] = {"mean": a["mean"], "std": a["std"], "n": len(a["values"]),
                               "diff": None, "spread": None, "beyond_spread": None, "better": None}
        if base is not None and arm != baseline:
            diff = a["mean"] - base["mean"]
            spread = (a["std"] or 0.0) + (base["std"] or 0.0)
            row.update(diff=diff, spread=spread, beyond_spread=abs(diff) > spread,
                       better=(diff > 0) == hib and diff != 0)
        out[arm] = row
    if show:
        print(f"{res['experiment']}: {res['metric']} ({'higher' if hib else 'lower'} is better), "
              f"mean ± sample std over seeds")
        width = max(len(a) for a in out)
        for arm, row in out.items():
            std = "n/a" if row["std"] is None else f"{row['std']:.{digits}f}"
            line = f"  {arm:<{width}}  {row['mean']:.{digits}f} ± {std}  (n={row['n']})"
            if row["diff"] is not None:
                verdict = ("beyond" if row["beyond_spread"] else "within") + " the seed spread"
                line += f"  vs {baseline}: {row['diff']:+.{digits}f} ({verdict})"
            print(line)
    return out


def conclusion(name_or_results: str | dict[str, Any], arm: str, baseline: str, digits: int = 4) -> str:
    """One sentence comparing ``arm`` with ``baseline``, computed from the results (the lessons print it).

    For example: "loss_free: 0.8393 ± 0.0050 against aux_1e-2: 0.8372 ± 0.0061 (3 seeds each): higher by
    0.0021, within the seed spread, so these seeds show no difference." (rule of :func:`summarize`).
    """
    res = _results(name_or_results)
    rows = summarize(res, baseline=baseline, show=False)
    if arm not in rows:
        raise ValueError(f"arm {arm!r} is not in {res['experiment']}: {', '.join(rows)}")
    a, b = rows[arm], rows[baseline]

    def ms(row: dict[str, Any]) -> str:
        return f"{row['mean']:.{digits}f}" + ("" if row["std"] is None else f" ± {row['std']:.{digits}f}")

    seeds = f"{a['n']} seeds each" if a["n"] == b["n"] else f"{a['n']} and {b['n']} seeds"
    text = f"{arm}: {ms(a)} against {baseline}: {ms(b)} ({seeds})"
    if a["diff"] == 0:
        return text + ": the same."
    direction = "higher" if a["diff"] > 0 else "lower"
    text += f": {direction} by {abs(a['diff']):.{digits}f}, "
    if not a["beyond_spread"]:
        return text + "within the seed spread, so these seeds show no difference."
    return text + f"beyond the seed spread: {arm} is {'better' if a['better'] else 'worse'} on this metric."


def extra_stats(name_or_results: str | dict[str, Any], key: str) -> dict[str, tuple[float, float | None]]:
    """{arm: (mean, sample std)} of one numeric extra metric (for example balancing's "maxvio_global")."""
    res = _results(name_or_results)
    return {arm: mean_std([float(v) for v in extra_values(res, arm, key)]) for arm in res["arms"]}


def extra_values(res: dict[str, Any], arm: str, key: str) -> list[Any]:
    """The per-seed values of one extra metric of one arm (clear error when absent)."""
    extra = res["arms"][arm]["extra"]
    if key not in extra:
        raise KeyError(f"arm {arm!r} of {res['experiment']} has no extra {key!r}; it has {', '.join(extra)}")
    return extra[key]


def plot(
    name_or_results: str | dict[str, Any], x: str | None = None, arms: list[str] | None = None, ax=None,
    y: str | None = None, labels: dict[str, str] | None = None,
):
    """Mean ± sample std per arm, from the JSON: error bars. Returns the matplotlib Axes.

    Without ``x``: one point per arm along the x axis (arm names as tick labels). With ``x`` (an extra
    key, for example "maxvio_global"): a scatter of the metric against that extra's mean, error bars
    both ways (the Pareto picture). ``y``: plot an extra key instead of the metric.
    """
    import matplotlib.pyplot as plt

    res = _results(name_or_results)
    names = arms or list(res["arms"])
    unknown = [a for a in names if a not in res["arms"]]
    if unknown:
        raise ValueError(f"arms {unknown} are not in {res['experiment']}: {', '.join(res['arms'])}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))

    def stats(arm: str, key: str | None) -> tuple[float, float]:
        values = res["arms"][arm]["values"] if key is None else extra_values(res, arm, key)
        mean, std = mean_std([float(v) for v in values])
        return mean, std or 0.0

    palette = plt.get_cmap("tab20").colors if len(names) > 10 else plt.get_cmap("tab10").colors  # one color per arm
    for i, arm in enumerate(names):
        my, sy = stats(arm, y)
        label = (labels or {}).get(arm, arm)
        color = palette[i % len(palette)]
        if x is None:
            ax.errorbar([i], [my], yerr=[sy], fmt="o", capsize=4, label=label, color=color)
        else:
            mx, sx = stats(arm, x)
            ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", capsize=3, label=label, color=color)
    if x is None:
        ax.set_xticks(range(len(names)), [(labels or {}).get(a, a) for a in names], rotation=30, ha="right")
    else:
        ax.set_xlabel(x)
        ax.legend(fontsize=7)
    ax.set_ylabel(y or res["metric"])
    ax.grid(alpha=0.3)
    return ax


def break_it_rows(traps: list[str], show: bool = True, digits: int = 3) -> list[dict[str, Any]]:
    """The measured effect of some traps of the ``break_it`` experiment, for the lesson each belongs to.

    Returns one dict per trap (in the order given): {"trap", "fault", "effect", "mean", "std", "n"}, read from
    data/experiments/break_it.json; ``show`` prints them as a table.
    """
    res = load("break_it")
    unknown = [t for t in traps if t not in res["arms"]]
    if unknown:
        raise ValueError(f"traps {unknown} are not arms of break_it: {', '.join(res['arms'])}")
    rows = []
    for trap in traps:
        arm = res["arms"][trap]
        rows.append({"trap": trap, "fault": arm["arm_settings"]["fault"], "effect": arm["arm_settings"]["effect"],
                     "mean": arm["mean"], "std": arm["std"], "n": len(arm["values"])})
    if show:
        from ..viz import text_table

        print(text_table(["trap", "fault", "measured effect", "mean ± std", "seeds"],
                         [[r["trap"], r["fault"], r["effect"],
                           f"{r['mean']:.{digits}f}" + ("" if r["std"] is None else f" ± {r['std']:.{digits}f}"),
                           r["n"]] for r in rows]))
    return rows


def __getattr__(attr: str):  # the runner's entry points, imported lazily (it imports torch)
    if attr in ("run_experiment", "train_run", "main"):
        from . import runner

        return getattr(runner, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
