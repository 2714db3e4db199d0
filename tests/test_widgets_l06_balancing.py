"""Lesson 06 widget and plots: the toy router collapses and balances, every control redraws, kept results plot."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from dsv3_edu.balance import ToyRouter, relative_domain_loads  # noqa: E402
from dsv3_edu.viz import moving_average  # noqa: E402
from dsv3_edu.widgets import l06_balancing as wb  # noqa: E402

torch.set_num_threads(1)


def test_toy_router_collapses_without_balancing_and_balances_with_it():
    free = ToyRouter(balance=False)
    free.step(100)
    assert free.maxvio[0] < 1.5 and sum(free.maxvio[-10:]) / 10 > 2.0  # collapse develops (max E/K - 1 = 3)
    balanced = ToyRouter(gamma=0.01, balance=True)
    balanced.step(100)
    assert sum(balanced.maxvio[-20:]) / 20 < 0.3
    assert torch.equal(free.bias, torch.zeros(8))


def test_toy_bias_moves_exactly_gamma_against_the_load():
    router = ToyRouter(gamma=0.05)
    router.step(5)
    previous = torch.zeros(8)
    for loads, bias in zip(router.loads, router.biases):
        torch.testing.assert_close((bias - previous) / 0.05, torch.sign(loads.mean() - loads), atol=1e-5, rtol=0)
        previous = bias


def test_toy_router_is_deterministic():
    a, b = ToyRouter(), ToyRouter()
    a.step(7)
    b.step(7)
    assert a.maxvio == b.maxvio and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("gamma", [0.0, -0.01, 2.0, float("nan"), "0.01"])
def test_invalid_gamma_is_a_clear_error(gamma):
    with pytest.raises(ValueError, match="out of range"):
        ToyRouter(gamma=gamma)


def test_invalid_router_shape():
    with pytest.raises(ValueError, match="top_k"):
        ToyRouter(n_experts=4, top_k=4)


def test_stepper_controls_redraw():
    box = wb.bias_stepper(gamma=0.01, steps_per_click=5)
    png0, html0 = box.image.value, box.html.value
    assert png0 and "step 0" in html0
    box.controls["step"].click()
    assert box.state["router"].steps == 5 and "step 5" in box.html.value and box.image.value != png0
    png1 = box.image.value
    box.controls["gamma"].value = 0.1
    assert box.state["router"].gamma == pytest.approx(0.1) and "gamma 0.1" in box.html.value
    assert box.image.value != png1
    box.controls["steps"].value = 3
    box.controls["step"].click()
    assert box.state["router"].steps == 8
    box.controls["balance"].value = False
    bias = box.state["router"].bias.clone()
    box.controls["step"].click()
    assert torch.equal(box.state["router"].bias, bias) and "update off" in box.html.value
    box.controls["reset"].click()
    assert box.state["router"].steps == 0 and "step 0" in box.html.value


def test_stepper_shows_errors_instead_of_raising():
    box = wb.bias_stepper()
    box.controls["steps"] = type("Fake", (), {"value": 0})()  # a value no slider would allow
    box.step()
    assert "Not drawn" in box.html.value and "out of range" in box.html.value


def test_table_rows_follow_the_sign_rule():
    router = ToyRouter()
    assert [r[1] for r in wb.toy_router_table(router)] == ["-"] * 8
    router.step(1)
    rows = wb.toy_router_table(router)
    loads = router.loads[-1]
    for row, c in zip(rows, loads.tolist()):
        assert row[2].startswith("-1" if c > loads.mean() else "+1" if c < loads.mean() else "0")


def fake_results(steps=30, layers=2, experts=4):
    def run(v):
        return {"maxvio_batch": [v] * steps, "maxvio_global": v, "val_loss": 1.0 + v,
                "domain_loads": {d: [[10 + i for i in range(experts)]] * layers for d in ("prose", "code")},
                "bias_steps": list(range(5, steps + 1, 5)), "bias": [[[0.0] * experts] * layers] * (steps // 5)}

    runs = {m: run(v) for m, v in zip(wb.RUN_COLORS, (2.0, 0.4, 0.08, 0.1))}
    return {"runs": runs, "gamma_sweep": {"0.0001": run(1.5), "0.001": runs["loss_free"], "0.01": run(0.2)}}


def test_plots_and_table_from_results():
    results = fake_results()
    for fig in (wb.plot_maxvio_curves(results), wb.plot_domain_heatmaps(results), wb.plot_gamma_sweep(results)):
        assert fig.axes
        matplotlib.pyplot.close(fig)
    text = wb.results_table(results)
    assert "loss_free gamma=0.01" in text and "0.080" in text and "gamma=0.001" not in text
    rel, domains = relative_domain_loads(results["runs"]["none"], 0)
    assert rel.shape == (4, 2) and domains == ["prose", "code"]
    torch.testing.assert_close(rel.mean(0), torch.ones(2, dtype=torch.float64))


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_missing_results_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dsv3_edu.bench balance"):
        wb.load_results(tmp_path / "nope.json")


@pytest.mark.skipif(not wb.RESULTS_PATH.exists(), reason="no kept results yet")
def test_kept_results_have_what_the_lesson_reads():
    results = wb.load_results()
    modes = ("none", "aux_loss", "loss_free", "loss_free_seq")
    for key in ("maxvio_global", "val_loss"):
        assert set(results[key]) == set(modes)
    assert set(results["gamma_sweep"]) == {"0.0001", "0.001", "0.01"}
    assert results["dispatch_speedup_vs_loop"] > 1 and results["dispatch_time_vs_dense"] > 0
    run = results["runs"]["loss_free"]
    assert len(run["maxvio_batch"]) == results["meta"]["steps"] and set(run["domain_loads"]) == {
        "prose", "arithmetic", "code", "csv"}
