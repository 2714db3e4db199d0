"""The speculative-decoding widget and helpers: segments match the output, every control redraws, bad input
gives a message."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_refused  # noqa: E402

from dsv3_edu import DeepSeekV3, ModelConfig, generate, speculative_generate  # noqa: E402
from dsv3_edu.evaluation import acceptance_runs, pool  # noqa: E402
from dsv3_edu.generate import SpeculativeStats  # noqa: E402
from dsv3_edu.widgets.l08_speculative import (  # noqa: E402
    forward_staircase,
    plot_tokens_vs_forwards,
    prompt_ids,
    segments_summary,
    speculative_explorer,
    speculative_html,
    speculative_segments,
    speculative_view,
    validation_prompts,
)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
             n_routed_experts=4, n_group=2, topk_group=2, max_position_embeddings=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.tiny(**SMALL)).eval()


def _hand_stats():
    """Prefill gives 10; step 1: draft 11 accepted, main 12; step 2: draft 99 rejected, main 13; step 3: 14 ok, 15."""
    trace = [
        {"position": 5, "fed": [10, 11], "draft": 11, "main": 11, "accepted": True, "added": [11, 12]},
        {"position": 7, "fed": [12, 99], "draft": 99, "main": 13, "accepted": False, "added": [13]},
        {"position": 8, "fed": [13, 14], "draft": 14, "main": 14, "accepted": True, "added": [14, 15]},
    ]
    return SpeculativeStats(new_tokens=5, main_forwards=4, drafts_proposed=3, drafts_accepted=2, trace=trace)


def test_segments_from_a_hand_written_trace():
    stats = _hand_stats()
    segs = speculative_segments(stats, [10, 11, 12, 13, 14])  # the last step's 15 was cut off by max_new_tokens
    assert segs == [("main", 10), ("accepted", 11), ("main", 12), ("rejected", 99), ("main", 13), ("accepted", 14)]
    assert segments_summary(segs) == {"main": 3, "accepted": 2, "rejected": 1}
    assert forward_staircase(stats) == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="does not match"):
        speculative_segments(stats, [10, 11, 12, 77, 14])
    html = speculative_html([257, 65], segs)
    assert "line-through" in html and html.count("<span") == 7  # <bos> is not shown
    fig = plot_tokens_vs_forwards(stats)
    assert len(fig.axes) == 1
    matplotlib.pyplot.close(fig)


def test_segments_match_the_package(model):
    ids = prompt_ids("One day, Tom goes")
    out, stats = speculative_generate(model, ids, 30, trace=True)
    new = out[0, ids.shape[1]:].tolist()
    segs = speculative_segments(stats, new)
    kinds = segments_summary(segs)
    assert kinds["accepted"] == stats.drafts_accepted
    assert kinds["main"] + kinds["accepted"] == 30
    assert [k for k, _ in segs if k != "rejected"] == stats.sources
    assert torch.equal(out, generate(model, ids, 30))


def test_measurements(model):
    rows = acceptance_runs(model, per_domain=1, new_tokens=12)
    assert [r["domain"] for r in rows] == ["prose", "arithmetic", "code", "csv"]
    assert all(r["identical"] and r["new_tokens"] == 12 for r in rows)
    p = pool(rows)
    assert 0 <= p["acceptance_rate"] <= 1 and 1 <= p["tokens_per_forward"] <= 2
    texts = validation_prompts()
    assert texts["prose"].startswith("One day, Tom goes to the park.") and all(len(t) == 32 for t in texts.values())


def test_view_reports_stats(model):
    html, fig, stats = speculative_view(model, "def max_of(a, b):", 20)
    matplotlib.pyplot.close(fig)
    assert "same as greedy" in html and ">yes<" in html and stats.new_tokens == 20


def test_every_control_redraws(model):
    box = speculative_explorer(model, new_tokens=16)
    assert set(box.controls) == {"prompt", "text", "new_tokens"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    for name, value in (("new_tokens", 24), ("prompt", "code"), ("prompt", "custom"), ("text", "Mia has")):
        before_image, before_html = box.image.value, box.html.value
        box.controls[name].value = value
        assert "Not drawn" not in box.html.value, name
        assert box.html.value != before_html, name
        if name != "text":  # a new custom text may give the same staircase (this model rejects every draft)
            assert box.image.value != before_image, name
    assert "<b>custom</b>, 24 new tokens" in box.html.value


def test_bad_input_gives_a_message(model):
    box = speculative_explorer(model, prompt="custom", new_tokens=8)
    assert_refused(box, "text", "", "prompt is empty")
    box.controls["text"].value = "x" * 250
    assert "exceeds max_position_embeddings=256" in box.html.value
    box.controls["prompt"].value = "csv"  # a held-out prompt again: drawn
    assert "Not drawn" not in box.html.value
    no_mtp = DeepSeekV3(ModelConfig.tiny(**{**SMALL, "num_nextn_predict_layers": 0})).eval()
    assert "no MTP module" in speculative_explorer(no_mtp).html.value


def test_text_box_follows_the_prompt_dropdown(model):
    texts = {"prose": "Mia has a", "code": "def f(x):"}
    box = speculative_explorer(model, texts=texts, new_tokens=6)
    text, prompt = box.controls["text"], box.controls["prompt"]
    assert text.continuous_update is False  # decodes when the learner presses enter, not on every keystroke
    assert text.value == "Mia has a"
    prompt.value = "code"
    assert text.value == "def f(x):" and "<b>code</b>" in box.html.value  # the box shows what is decoded
    text.value = "def g(y):"  # typing over a held-out prompt makes it a custom one, decoded once
    assert prompt.value == "custom" and "<b>custom</b>" in box.html.value
    html = box.html.value
    prompt.value = "prose"
    assert text.value == "Mia has a" and box.html.value != html
