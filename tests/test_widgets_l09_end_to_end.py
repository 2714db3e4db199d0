"""Lesson 09 widget and helpers: generation equals dsv3_edu.generate, every control redraws, bad values give a
message, sums are scored right, loads and histories are drawn."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_refused  # noqa: E402

from dsv3_edu import DeepSeekV3, generate  # noqa: E402
from dsv3_edu.balance import LoadTracker  # noqa: E402
from dsv3_edu.data import ByteTokenizer  # noqa: E402
from dsv3_edu.evaluation import score_sums  # noqa: E402
from dsv3_edu.train import preset  # noqa: E402
from dsv3_edu.widgets.l09_end_to_end import (  # noqa: E402
    DOMAIN_PROMPTS,
    generation_explorer,
    generation_html,
    generation_view,
    load_history,
    plot_domain_loads,
    plot_generation,
    plot_history,
    relative_loads,
)

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "tiny-dsv3"


@pytest.fixture(scope="module")
def model():
    config, _ = preset("smoke")
    torch.manual_seed(0)
    return DeepSeekV3(config.replace(initializer_range=0.1)).eval()


def test_score_sums_checks_whole_lines_only():
    assert score_sums("sums:\n2+2=4\n10+5=16\n7+8=15\n") == (2, 3)
    assert score_sums("sums:\n2+2=4\n3+3=") == (1, 1)  # the unfinished last line is no claim
    assert score_sums("sums:\n2+2=4\n3+3=6") == (1, 1)  # nor is a last line without its newline
    assert score_sums("x 2+2=4\n12+1=13 y\n") == (0, 0)  # only lines that are exactly a+b=c
    assert score_sums("no sums here") == (0, 0)


def test_greedy_view_is_generate_and_probabilities_are_the_model_s(model):
    prompt = DOMAIN_PROMPTS["code"]
    gen = generation_view(model, prompt, max_new_tokens=12)
    ids = torch.tensor([ByteTokenizer().encode(prompt)])
    out = generate(model, ids, 12)
    assert gen.new_ids == out[0, ids.shape[1]:].tolist() and gen.text == prompt + gen.completion
    assert len(gen.labels) == len(gen.probs) == 12
    with torch.no_grad():
        p = model(out, mtp=False).logits[0, ids.shape[1] - 1 + 3].softmax(-1)[gen.new_ids[3]]
    assert abs(gen.probs[3] - float(p)) < 1e-6
    assert all(0 < p <= 1 for p in gen.probs)


def test_sampling_is_seeded_and_top_k_is_respected(model):
    a = generation_view(model, "abc", 20, temperature=1.0, top_k=5, seed=0)
    b = generation_view(model, "abc", 20, temperature=1.0, top_k=5, seed=0)
    c = generation_view(model, "abc", 20, temperature=1.0, top_k=5, seed=1)
    assert a.new_ids == b.new_ids and a.new_ids != c.new_ids
    one = generation_view(model, "abc", 10, temperature=1.0, top_k=1, seed=3)
    assert one.new_ids == generation_view(model, "abc", 10).new_ids  # top_k=1 is greedy


def test_bad_values_raise_clear_errors(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generation_view(model, "", 5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generation_view(model, "a" * 500, 20)
    with pytest.raises(ValueError, match="temperature"):
        generation_view(model, "a", 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generation_view(model, "a", 5, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="domain"):
        generation_explorer(model, domain="poetry")


def test_html_and_plot(model):
    gen = generation_view(model, "sums:\n1+1=", 8)
    html = generation_html(gen)
    assert "<pre" in html and "8 new tokens" in html
    fig = plot_generation(gen)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 8
    matplotlib.pyplot.close(fig)
    from dsv3_edu.widgets.l09_end_to_end import Generation

    fake = Generation("sums:\n", "2+2=4\n3+3=7\n", [1], ["2"], [0.5])
    assert "complete sums a+b=c in the text: 1 of 2 right" in generation_html(fake)


def test_every_control_redraws(model):
    box = generation_explorer(model, domain="code", max_new_tokens=10)
    assert set(box.controls) == {"domain", "prompt", "max_new_tokens", "temperature", "top_k"}
    assert box.image.value[:4] == b"\x89PNG"
    assert "<b>greedy (temperature 0: top_k off acts only when sampling)</b>" in box.html.value
    for name, value in (("domain", "csv"), ("prompt", "Tom has a hat."), ("max_new_tokens", 14),
                        ("temperature", 1.0), ("top_k", 3)):
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert "Not drawn" not in box.html.value, name
        assert box.html.value != before_html, name
        assert box.image.value != before_image, name
    assert "temperature 1.0, top_k 3, seed 0" in box.html.value
    box.controls["temperature"].value = 0.0  # greedy: top_k cannot change the text, and the view says why
    before = box.html.value
    box.controls["top_k"].value = 5
    assert box.html.value != before and "top_k 5 acts only when sampling" in box.html.value
    box.controls["domain"].value = "arithmetic"
    assert box.controls["prompt"].value == DOMAIN_PROMPTS["arithmetic"]
    assert "sums:" in box.html.value


def test_out_of_range_shows_a_message_not_a_traceback(model):
    box = generation_explorer(model, domain="prose", max_new_tokens=5)
    image = box.image.value
    assert_refused(box, "prompt", "", "prompt is empty")
    box.controls["prompt"].value = "x" * 510
    assert "Not drawn" in box.html.value and "max_position_embeddings=512" in box.html.value
    box.controls["prompt"].value = "Mia"
    assert "Not drawn" not in box.html.value and box.image.value != image


def test_domain_loads_heatmap(model):
    tracker = LoadTracker(model)
    with torch.no_grad():
        model(torch.randint(256, (3, 16)))
    tracker.update(["prose", "code", "prose"])
    rel = relative_loads(tracker.domain_loads["prose"])
    torch.testing.assert_close(rel.mean(-1), torch.ones(rel.shape[0], dtype=torch.float64))
    fig = plot_domain_loads(tracker)
    assert len(fig.axes) == len(tracker.names) + 1  # one panel per MoE layer and the colorbar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["layer 1", "mtp.0"]
    matplotlib.pyplot.close(fig)
    empty = LoadTracker(model)
    with pytest.raises(ValueError, match="no per-domain loads"):
        plot_domain_loads(empty)


def test_history_loads_and_plots(tmp_path):
    records = [{"step": s, "loss": 3.0 / s, "main_loss": 2.5 / s, "mtp_loss": 2.6 / s, "maxvio_batch": 1.0 / s,
                "lr": 1e-3} for s in range(1, 31)]
    records[-1].update(val_main_loss=0.2, val_mtp_loss=0.25, maxvio_global=0.05)
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "dict.json").write_text(json.dumps({"history": records}))
    assert load_history(tmp_path / "list.json") == load_history(tmp_path / "dict.json") == records
    fig = plot_history(records, window=5)
    assert len(fig.axes) == 4 and len(fig.axes[0].lines) == 3  # per step, moving average, validation
    matplotlib.pyplot.close(fig)
    (tmp_path / "bad.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(ValueError, match="training records"):
        load_history(tmp_path / "bad.json")
