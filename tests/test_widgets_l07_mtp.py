"""The MTP explorer: the chain is aligned right, every control redraws, out-of-range values give a message."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from widget_helpers import assert_redraws  # noqa: E402

from dsv3_edu.data import ByteTokenizer  # noqa: E402
from dsv3_edu.widgets.l07_mtp import (  # noqa: E402
    mtp_alignment_rows,
    mtp_alignment_table,
    mtp_chain,
    mtp_chain_table,
    mtp_explorer,
    mtp_forward_all,
    plot_mtp_view,
    sample_texts,
    untrained_model,
)


@pytest.fixture(scope="module")
def model():
    return untrained_model(depth=2, seed=0)


def test_sample_texts_are_real_validation_text():
    texts = sample_texts()
    assert list(texts) == ["prose", "arithmetic", "code", "csv"]
    assert texts["prose"].startswith("One day, Tom goes to the park.")
    assert all(10 < len(t) <= 56 for t in texts.values())


def test_alignment_table_shifts_by_one_per_depth():
    ids = ByteTokenizer().encode("abcdef")
    rows = mtp_alignment_rows(ids, depths=2)
    assert rows[0] == ["0", "'a'", "'b'", "h^0_0 + Emb('b')", "'c'", "h^1_0 + Emb('c')", "'d'"]
    assert rows[2][3:] == ["h^0_2 + Emb('d')", "'e'", "h^1_2 + Emb('e')", "'f'"]
    assert rows[4][3:] == ["h^0_4 + Emb('f')", "-", "-", "-"]  # depth 1 is fed t_5 but has no target
    assert rows[5][2:] == ["-", "-", "-", "-", "-"]
    text = mtp_alignment_table("Tom has a hat.", 1)
    assert "depth 1 predicts t_(i+2)" in text and "depth 2" not in text and "'␣'" in text


def test_chain_matches_the_model_outputs(model):
    ids = ByteTokenizer().encode("Mia has a red kite.")
    probs = mtp_forward_all(model, ids)
    assert [tuple(p.shape) for p in probs] == [(19, 260), (18, 260), (17, 260)]
    rows = mtp_chain(model, ids, position=5, depth=2)
    assert [r.name for r in rows] == ["main", "depth 1", "depth 2"]
    assert [r.target_position for r in rows] == [6, 7, 8]
    assert [r.target for r in rows] == ids[6:9]
    assert rows[1].sees == "h^0_5 + Emb('s')" and rows[2].sees == "h^1_5 + Emb('␣')"
    with torch.no_grad():
        out = model(torch.tensor([ids]))
        h, logits = model.mtp_forward(1, out.hidden_states[:, :-1], torch.tensor([ids[1:]]))
    assert rows[1].top_ids[0] == int(logits[0, 5].argmax()) == int(out.mtp_logits[0][0, 5].argmax())
    assert rows[2].top_ids[0] == int(out.mtp_logits[1][0, 5].argmax())
    assert abs(sum(rows[0].top_probs) - float(probs[0][5].topk(3).values.sum())) < 1e-6
    table = mtp_chain_table(model, "Mia has a red kite.", 5, 2)
    assert "t_8 = 'a'" in table and "depth 2" in table


def test_plot_has_grid_and_bars(model):
    ids = ByteTokenizer().encode("Mia has a red kite.")
    fig = plot_mtp_view(ids, 5, 2, mtp_chain(model, ids, 5, 2))
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)
    fig = plot_mtp_view(ids, 5, 1)
    assert len(fig.axes) == 1
    matplotlib.pyplot.close(fig)


def test_every_control_redraws(model):
    box = mtp_explorer(model, position=8, depth=1)
    assert set(box.controls) == {"text", "position", "depth"}
    assert box.image.value[:4] == b"\x89PNG" and "<table>" in box.html.value
    assert_redraws(box, (("depth", 2), ("text", "code"), ("position", 3)))
    assert "code, position 3, depth 2" in box.html.value
    assert "t_0..t_5 as the main model at position 5" in box.html.value


def test_out_of_range_shows_a_message_not_a_traceback(model):
    texts = {"short": "abcdefgh", "long": "abcdefghijklmnopqrst"}
    box = mtp_explorer(model, texts=texts, text="long", position=15, depth=2)
    image = box.image.value
    box.controls["text"].value = "short"  # position 15 does not exist in 8 tokens: moved to 4, and said so
    assert box.controls["position"].value == 4 and "Not drawn" not in box.html.value
    assert "position 15 -&gt; 4: with depth 2 this text's last usable position is 4" in box.html.value
    assert box.image.value != image
    with pytest.raises(ValueError, match="depths 1..2"):
        mtp_chain(model, ByteTokenizer().encode("abcdefgh"), 1, 3)


def test_default_model_is_untrained_with_two_depths():
    box = mtp_explorer()
    assert box.controls["depth"].max == 2 and "<table>" in box.html.value
