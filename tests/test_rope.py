"""RoPE and YaRN: hand-worked values, the relative-position property, and transformers' DeepseekV3 rotary."""

import math

import pytest
import torch

from dsv3_edu.config import ModelConfig
from dsv3_edu.rope import (
    RotaryEmbedding,
    apply_rope,
    deinterleave,
    linear_ramp,
    rope_attention_factor,
    rope_inv_freq,
    softmax_scale,
    yarn_correction_range,
    yarn_get_mscale,
    yarn_ramp,
)

RELEASED = ModelConfig.deepseek_v3()  # rope_scaling: yarn, factor 40, beta 32/1, mscale 1/1, original 4096


def yarn_config(**scaling):
    base = dict(factor=8, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0,
                original_max_position_embeddings=64)
    base.update(scaling)
    return ModelConfig.tiny(qk_rope_head_dim=16, rope_scaling={"type": "yarn", **base})


# ------------------------------------------------------------------ plain RoPE
@pytest.mark.parametrize("interleaved", [True, False])
def test_relative_position_property(interleaved):
    """q at m and k at n score the same for every (m, n) with the same offset m - n."""
    torch.manual_seed(0)
    for config in (ModelConfig.tiny(), yarn_config()):
        rope = RotaryEmbedding(config)
        R = config.qk_rope_head_dim
        q, k = torch.randn(R), torch.randn(R)

        def score(m, n, rope=rope, q=q, k=k):
            cos, sin = rope(torch.tensor([m, n]))
            qm = apply_rope(q[None], cos[:1], sin[:1], interleaved)
            kn = apply_rope(k[None], cos[1:], sin[1:], interleaved)
            return (qm * kn).sum().item()

        for offset in (0, 3, 17):
            ref = score(offset, 0)
            for n in (1, 5, 40, 300):
                assert score(n + offset, n) == pytest.approx(ref, rel=1e-4, abs=1e-5)
        assert score(5, 0) != pytest.approx(score(9, 0), rel=1e-3)


def test_interleaved_is_the_official_complex_multiply():
    """[OFF] views the rope dims as R/2 complex numbers (x0 + i x1, ...) and multiplies by e^{i m theta}."""
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    x = torch.randn(2, 3, 5, config.qk_rope_head_dim)  # (B, H, T, R)
    positions = torch.arange(5)
    cos, sin = RotaryEmbedding(config)(positions)
    angles = torch.outer(positions.float(), rope_inv_freq(config))
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    official = torch.view_as_real(torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * freqs_cis).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin, interleaved=True), official)


def test_half_split_equals_interleaved_on_deinterleaved_dims():
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    x = torch.randn(4, 6, config.qk_rope_head_dim)
    cos, sin = RotaryEmbedding(config)(torch.arange(6))
    half_split = apply_rope(deinterleave(x), cos, sin, interleaved=False)
    torch.testing.assert_close(half_split, deinterleave(apply_rope(x, cos, sin, interleaved=True)))
    assert deinterleave(torch.arange(6)).tolist() == [0, 2, 4, 1, 3, 5]


def test_position_zero_is_identity_and_norm_is_kept():
    torch.manual_seed(0)
    config = yarn_config(mscale=1.0, mscale_all_dim=1.0)  # attention factor 1
    x = torch.randn(7, config.qk_rope_head_dim)
    cos, sin = RotaryEmbedding(config)(torch.arange(7))
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_position_beyond_max_raises():
    config = ModelConfig.tiny(max_position_embeddings=16)
    rope = RotaryEmbedding(config)
    rope(torch.arange(16))
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        rope(torch.arange(10, 17))


def test_no_rope_state_in_state_dict():
    assert RotaryEmbedding(RELEASED).state_dict() == {}


# ----------------------------------------------------------------------- YaRN
def test_yarn_hand_worked_released_values():
    """The released config: dim 64, base 10000, original context 4096, factor 40, beta 32/1."""
    low, high = yarn_correction_range(32, 1, 64, 10000.0, 4096)
    # 64 ln(4096 / (32 * 2 pi)) / (2 ln 10000) = 10.47 -> floor 10; same with 1 rotation = 22.50 -> ceil 23
    assert (low, high) == (10, 23)
    assert yarn_get_mscale(40, 1.0) == pytest.approx(1 + 0.1 * math.log(40)) == pytest.approx(1.368888)
    assert yarn_get_mscale(1.0, 1.0) == 1.0
    assert rope_attention_factor(RELEASED) == 1.0  # mscale == mscale_all_dim: cos/sin unscaled
    assert softmax_scale(RELEASED) == pytest.approx((1 + 0.1 * math.log(40)) ** 2 / math.sqrt(192))
    assert softmax_scale(ModelConfig.deepseek_v3(rope_scaling=None)) == pytest.approx(192**-0.5)


@pytest.mark.parametrize("config", [RELEASED, yarn_config(), yarn_config(factor=4, beta_fast=8, beta_slow=2)])
def test_yarn_inv_freq_against_independent_formula(config):
    s, R, base = config.rope_scaling, config.qk_rope_head_dim, config.rope_theta
    # Written out again from [OFF] precompute_freqs_cis, without the package's helpers.
    def correction_dim(rotations):
        return R * math.log(s["original_max_position_embeddings"] / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(s["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(s["beta_slow"])), R - 1)
    i = torch.arange(R // 2, dtype=torch.float64)
    ramp = ((i - low) / (high - low)).clamp(0, 1)
    freqs = 1.0 / base ** (torch.arange(0, R, 2, dtype=torch.float64) / R)
    expected = freqs / s["factor"] * ramp + freqs * (1 - ramp)
    torch.testing.assert_close(yarn_ramp(config).double(), ramp)
    torch.testing.assert_close(rope_inv_freq(config).double(), expected, rtol=1e-6, atol=0)
    assert rope_inv_freq(config)[0] == 1.0  # the fastest pair is never stretched
    assert rope_inv_freq(config)[-1] == pytest.approx(freqs[-1].item() / s["factor"], rel=1e-6)


def test_linear_ramp_degenerate_range():
    assert linear_ramp(3, 3, 6).tolist() == pytest.approx([0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize(
    "scaling", [dict(), dict(mscale=0.707, mscale_all_dim=0.707), dict(mscale=1.0, mscale_all_dim=0.5)]
)
def test_mscale_factors(scaling):
    config = yarn_config(**scaling)
    s = config.rope_scaling
    m = lambda k: 0.1 * k * math.log(s["factor"]) + 1  # noqa: E731
    assert rope_attention_factor(config) == pytest.approx(m(s["mscale"]) / m(s["mscale_all_dim"]))
    assert softmax_scale(config) == pytest.approx(m(s["mscale_all_dim"]) ** 2 / math.sqrt(config.qk_head_dim))


# ------------------------------------------------------------- transformers
def hf_rotary(config):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding

    return DeepseekV3RotaryEmbedding(DeepseekV3Config(**config.to_hf("transformers")))


@pytest.mark.parametrize(
    "config",
    [
        RELEASED,
        ModelConfig.deepseek_v3(rope_scaling=None),
        yarn_config(),
        yarn_config(mscale=0.707, mscale_all_dim=0.707),
        yarn_config(mscale=1.0, mscale_all_dim=0.5),
    ],
    ids=["released", "no-yarn", "tiny-yarn", "mscale-0.707", "mscale-unequal"],
)
def test_rotary_matches_transformers(config):
    hf = hf_rotary(config)
    ours = RotaryEmbedding(config)
    torch.testing.assert_close(ours.inv_freq, hf.inv_freq, rtol=0, atol=0)
    assert ours.attention_factor == pytest.approx(hf.attention_scaling)
    positions = torch.tensor([0, 1, 2, 63, 64, 65, 300, config.max_position_embeddings - 1])
    cos, sin = ours(positions)
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.float32), positions[None])
    half = config.qk_rope_head_dim // 2  # transformers stores cat(angles, angles)
    torch.testing.assert_close(cos, hf_cos[0, :, :half], rtol=0, atol=0)
    torch.testing.assert_close(sin, hf_sin[0, :, half:], rtol=0, atol=0)


def test_softmax_scale_matches_transformers():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    for config in (RELEASED, yarn_config(mscale=1.0, mscale_all_dim=0.5), ModelConfig.tiny()):
        params = config.to_hf("transformers")["rope_parameters"]
        assert softmax_scale(config) == pytest.approx(yarn_apply_mscale(params, config.qk_head_dim**-0.5), rel=1e-12)
