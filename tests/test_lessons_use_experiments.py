"""The lessons show the kept experiments (issue "Show, don't cite"): each lesson loads its experiment's JSON
through the package, the numbers its recorded outputs print are the JSON's, its conclusion sentences are the
ones :func:`dsv3_edu.experiments.conclusion` computes from the JSON, and its re-run cell writes nothing.

The checks read the *recorded* notebook outputs (what a learner sees, and what nbval compares strictly), so a
lesson whose prose or printout drifts from data/experiments/*.json fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsv3_edu import experiments as ex

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# lesson -> (experiments it loads with ex.load, break_it traps it shows, experiments it re-runs with --quick)
LESSONS = {
    "02_rope": ([], ["half_split_rope", "missing_mscale"], []),
    "03_mla": (["attention"], [], ["attention"]),
    "05_deepseek_moe": (["moe_granularity"], ["bias_in_gate_weights", "group_mask_zero"], ["moe_granularity"]),
    "06_load_balancing": (["balancing"], ["flipped_bias_sign"], ["balancing"]),
    "07_multi_token_prediction": (["mtp"], ["mtp_label_leak"], ["mtp"]),
    "08_speculative_decoding": (["speculative"], ["unverified_drafts"], ["speculative"]),
    "09_tiny_dsv3_end_to_end": (["mtp"], [], []),
}

ARM_LINE = re.compile(r"^\s+(\S+)\s+(-?\d+\.\d+) ± (\d+\.\d+|n/a)\s+\(n=(\d+)\)")
CONCLUSION = re.compile(r"^(\S+): -?\d+\.\d+(?: ± \d+\.\d+)? against (\S+): ")


def cells(lesson: str) -> list[dict]:
    path = NOTEBOOKS / f"{lesson}.ipynb"
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def printed(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def loading_cells(lesson: str, name: str) -> list[dict]:
    return [c for c in cells(lesson) if c["cell_type"] == "code" and f'ex.load("{name}")' in source(c)
            and "NBVAL_SKIP" not in source(c)]


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_loads_its_experiments_through_the_package(lesson):
    names, traps, _ = LESSONS[lesson]
    for name in names:
        found = loading_cells(lesson, name)
        assert found, f"lesson {lesson} never calls ex.load({name!r})"
        assert any(printed(c) for c in found), f"lesson {lesson}: the cell that loads {name} has no recorded output"
    shown = "".join(source(c) for c in cells(lesson) if "ex.break_it_rows(" in source(c))
    for trap in traps:
        assert f'"{trap}"' in shown, f"lesson {lesson} does not show the break_it row {trap}"
    for c in cells(lesson):  # nothing reads the kept files behind the package's back
        if c["cell_type"] == "code":
            assert "data/experiments" not in source(c), f"lesson {lesson} reads data/experiments/ directly"


@pytest.mark.parametrize("lesson", LESSONS)
def test_printed_means_and_stds_are_the_json(lesson):
    names, _, _ = LESSONS[lesson]
    for name in names:
        res = ex.load(name)
        summaries = [c for c in loading_cells(lesson, name) if "ex.summarize(" in source(c)
                     and "show=False" not in source(c)]
        for cell in summaries:
            text = printed(cell)
            assert text.startswith(f"{name}: "), f"lesson {lesson}: no summary of {name} printed"
            seen = {}
            for line in text.splitlines():
                m = ARM_LINE.match(line)
                if m:
                    seen[m.group(1)] = (m.group(2), m.group(3), int(m.group(4)))
            assert set(seen) == set(res["arms"]), f"lesson {lesson}: printed arms {sorted(seen)}"
            for arm, (mean, std, n) in seen.items():
                a = res["arms"][arm]
                assert mean == f"{a['mean']:.4f}" and std == f"{a['std']:.4f}" and n == len(a["values"]), arm


@pytest.mark.parametrize("lesson", [k for k, v in LESSONS.items() if v[0]])
def test_printed_conclusions_are_computed_from_the_json(lesson):
    names, _, _ = LESSONS[lesson]
    count = 0
    for name in names:
        for cell in loading_cells(lesson, name):
            for line in printed(cell).splitlines():
                m = CONCLUSION.match(line)
                if m and m.group(1) in ex.load(name)["arms"]:
                    assert line in {ex.conclusion(name, m.group(1), m.group(2), digits=d) for d in (2, 3, 4)}, \
                        (lesson, line)
                    count += 1
    assert count >= 1, f"lesson {lesson} prints no conclusion sentence from experiments.conclusion"


@pytest.mark.parametrize("lesson", [k for k, v in LESSONS.items() if v[1]])
def test_break_it_rows_printed_are_the_json(lesson):
    _, traps, _ = LESSONS[lesson]
    res = ex.load("break_it")
    text = "\n".join(printed(c) for c in cells(lesson) if "break_it_rows" in source(c))
    for trap in traps:
        line = next((ln for ln in text.splitlines() if ln.startswith(trap + " ")), None)
        assert line is not None, f"lesson {lesson} does not print trap {trap}"
        a = res["arms"][trap]
        assert any(f"{a['mean']:.{d}f} ± {a['std']:.{d}f}" in line for d in (3, 4)), line


@pytest.mark.parametrize("lesson", [k for k, v in LESSONS.items() if v[2]])
def test_rerun_cell_is_quick_and_writes_nothing(lesson):
    _, _, reruns = LESSONS[lesson]
    for name in reruns:
        found = [source(c) for c in cells(lesson) if f'run_experiment("{name}"' in source(c)]
        assert found, f"lesson {lesson} has no cell that re-runs {name}"
        for src in found:
            assert src.startswith("# NBVAL_SKIP"), "the re-run must not execute under nbval"
            assert "quick=True" in src and "json_path" not in src and "force" not in src, src


def test_lesson_01_points_to_the_measured_answer_in_03():
    text = "".join(source(c) for c in cells("01_attention_kv_cache") if c["cell_type"] == "markdown")
    assert 'lesson 03, "Measured: why not MQA?"' in text
    assert any(source(c).startswith("## Measured: why not MQA?") for c in cells("03_mla"))
    res = ex.load("attention")
    diff = res["arms"]["mqa"]["mean"] - res["arms"]["mha"]["mean"]
    assert f"{diff:.3f} nats per byte above MHA" in text  # the pointer's number is the JSON's


def test_speculative_acceptance_rows_are_the_json():
    res = ex.load("speculative")
    text = "\n".join(printed(c) for c in loading_cells("08_speculative_decoding", "speculative"))
    for label, key in (("all drafts", "acceptance"), ("outside repeats", "acceptance_outside_repeats"),
                       ("inside a repeated 16-gram", "acceptance_in_repeats")):
        mean, std = ex.mean_std(ex.extra_values(res, "tiny_dsv3", key))
        line = next(ln for ln in text.splitlines() if ln.startswith(label))
        assert line.endswith(f"{mean:.3f} ± {std:.3f}"), line


def test_mtp_same_target_rows_are_the_json():
    res = ex.load("mtp")
    text = "\n".join(printed(c) for c in loading_cells("07_multi_token_prediction", "mtp"))
    for arm in res["arms"]:
        depth, main = ex.extra_values(res, arm, "mtp_loss"), ex.extra_values(res, arm, "main_loss_same")
        for k in range(len(depth[0])):
            gap = ex.mean_std([d[k] - m[k] for d, m in zip(depth, main)])
            row = re.compile(rf"^{re.escape(arm)}\s+{k + 1}\s.*\s{re.escape('{:+.3f} ± {:.3f}'.format(*gap))}\s")
            assert any(row.match(ln) for ln in text.splitlines()), (arm, k + 1)


def test_break_it_rows_reads_the_json():
    res = ex.load("break_it")
    rows = ex.break_it_rows(["missing_mscale", "half_split_rope"], show=False)
    assert [r["trap"] for r in rows] == ["missing_mscale", "half_split_rope"]
    for r in rows:
        arm = res["arms"][r["trap"]]
        assert (r["mean"], r["std"], r["n"]) == (arm["mean"], arm["std"], len(arm["values"]))
        assert r["effect"] == arm["arm_settings"]["effect"] and r["fault"] == arm["arm_settings"]["fault"]
    with pytest.raises(ValueError, match="not arms of break_it"):
        ex.break_it_rows(["no_such_trap"])


def test_plot_draws_the_json_means_and_stds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = ex.load("balancing")
    ax = ex.plot(res, x="maxvio_global")
    drawn = [v for c in ax.containers for v in c.lines[0].get_xydata()[0].tolist()]
    expected = [v for arm in res["arms"]
                for v in (ex.mean_std(ex.extra_values(res, arm, "maxvio_global"))[0], res["arms"][arm]["mean"])]
    assert drawn == pytest.approx(expected, rel=1e-12)
    colors = {tuple(c.lines[0].get_color()) if not isinstance(c.lines[0].get_color(), str)
              else c.lines[0].get_color() for c in ax.containers}
    assert len(colors) == len(res["arms"])  # every arm its own color, even with more than 10 arms
    plt.close(ax.figure)
