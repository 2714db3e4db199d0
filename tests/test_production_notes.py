"""What the lessons say about the installed transformers ([HF] 5.24, notebooks/REFERENCE.md), asserted.

Each test proves one sentence of a lesson's "what production code does" notes by introspection or a tiny run
of transformers' own DeepSeek-V3, so that a new transformers release that changes the fact fails here and
sends us back to the lesson. The lesson and cell each test guards are named in its docstring.
"""

import inspect
import math
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, DynamicCache, StaticCache  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf  # noqa: E402

from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.moe import Gate  # noqa: E402
from dsv3_edu.rope import rope_inv_freq  # noqa: E402

transformers.logging.set_verbosity_error()

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
TINY = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
    n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=8, num_nextn_predict_layers=1, routed_scaling_factor=2.5,
    bos_token_id=None, eos_token_id=None, pad_token_id=None,
)


def tiny_config(**overrides) -> DeepseekV3Config:
    return DeepseekV3Config(**{**TINY, **overrides}, attn_implementation="eager")


def tiny_model(**overrides) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(tiny_config(**overrides)).eval()


def test_the_pinned_version_is_installed():
    """Every note below names transformers 5.24; the recorded lessons assume the pin of .ci/constraints.txt."""
    assert transformers.__version__.startswith("5.24."), transformers.__version__


# ------------------------------------------------------------------ lesson 05: the router
def test_the_whole_routing_rule_lives_in_DeepseekV3TopkRouter():
    """05 recap: the rule is in DeepseekV3TopkRouter.forward; DeepseekV3MoE only calls the router.
    Behaviour: the router alone returns the experts and weights of dsv3_edu's Gate (same rule), with negative
    biases (dropped groups filled with -inf, trap 2) and group limits."""
    assert not hasattr(hf.DeepseekV3MoE, "route_tokens_to_experts")
    assert "self.gate(" in inspect.getsource(hf.DeepseekV3MoE.forward)
    config = tiny_config()
    router = hf.DeepseekV3TopkRouter(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g))
        router.e_score_correction_bias.copy_(-torch.rand(8, generator=g))  # negative: where 0.0 masking fails
    ours = Gate(ModelConfig.tiny(hidden_size=32, n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2))
    ours.load_state_dict({"weight": router.weight.detach(), "e_score_correction_bias": router.e_score_correction_bias})
    x = torch.randn(50, 32, generator=g)
    with torch.no_grad():
        _, hf_weights, hf_idx = router(x)
        our_idx, our_weights, _ = ours(x)
    order_hf, order_ours = hf_idx.argsort(dim=1), our_idx.argsort(dim=1)
    assert torch.equal(hf_idx.gather(1, order_hf), our_idx.gather(1, order_ours))
    torch.testing.assert_close(hf_weights.gather(1, order_hf), our_weights.gather(1, order_ours))
    groups = (hf_idx // 2).sort(dim=1).values  # 4 groups of 2 experts
    assert ((groups[:, 1:] != groups[:, :-1]).sum(dim=1) + 1 <= 2).all()  # at most topk_group = 2 groups


def test_router_logits_are_fp32_and_router_tensors_are_kept_in_fp32():
    """05: transformers computes the router logits in fp32 even in a bf16 model, and keeps gate.weight and
    e_score_correction_bias in fp32 when loading (_keep_in_fp32_modules_strict)."""
    model = tiny_model().to(torch.bfloat16)
    gate = model.model.layers[1].mlp.gate
    assert isinstance(gate, hf.DeepseekV3TopkRouter)
    logits, weights, _ = gate(torch.randn(3, 32, dtype=torch.bfloat16))
    assert logits.dtype == torch.float32 and weights.dtype == torch.float32
    assert set(hf.DeepseekV3PreTrainedModel._keep_in_fp32_modules_strict) == {"gate.weight", "e_score_correction_bias"}


def test_experts_are_fused_3d_tensors():
    """05: transformers stores the routed experts fused: gate_up_proj (E, 2f, d) and down_proj (E, d, f)."""
    experts = tiny_model().model.layers[1].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (8, 2 * 16, 32)
    assert tuple(experts.down_proj.shape) == (8, 32, 16)


# ------------------------------------------------------------------ lesson 02: RoPE and YaRN
def test_cos_and_sin_are_cast_to_the_model_dtype():
    """02: transformers computes cos/sin in fp32, then casts them to the input's dtype, so a bf16 model
    rotates in bf16 (the official code and dsv3_edu rotate in fp32)."""
    rotary = hf.DeepseekV3RotaryEmbedding(tiny_config(rope_parameters=YARN))
    for dtype in (torch.bfloat16, torch.float32):
        cos, sin = rotary(torch.zeros(1, dtype=dtype), torch.arange(5)[None])
        assert cos.dtype == dtype and sin.dtype == dtype


def test_q_rope_and_k_rope_share_one_cos_sin_table():
    """02: YaRN's frequencies reach q^R and k^R alike: one apply_rotary_pos_emb_interleave(q, k, cos, sin) call
    rotates both with the same table, and the table is the YaRN one of dsv3_edu."""
    assert list(inspect.signature(hf.apply_rotary_pos_emb_interleave).parameters)[:4] == ["q", "k", "cos", "sin"]
    source = inspect.getsource(hf.DeepseekV3Attention.forward)
    assert re.search(r"q_rot, k_rot = apply_rotary_pos_emb_interleave\(q_rot, k_rot, cos, sin\)", source)
    config = tiny_config(rope_parameters=YARN, max_position_embeddings=163840)
    ours = ModelConfig.tiny(qk_rope_head_dim=4, rope_scaling={"type": "yarn", **{k: v for k, v in YARN.items()
                                                                                  if k not in ("rope_type",
                                                                                               "rope_theta")}})
    torch.testing.assert_close(hf.DeepseekV3RotaryEmbedding(config).inv_freq, rope_inv_freq(ours))


@pytest.mark.parametrize("max_positions", [256, 163840])
def test_yarn_is_applied_whatever_the_sequence_length(max_positions):
    """02: transformers applies the YaRN frequencies and the mscale^2 softmax factor whenever the config has
    rope_scaling, even when max_position_embeddings is below original_max_position_embeddings (the official
    code switches both on only when max_seq_len > original_seq_len)."""
    config = tiny_config(rope_parameters=YARN, max_position_embeddings=max_positions)
    attention = hf.DeepseekV3Attention(config, layer_idx=0)
    mscale = 0.1 * math.log(40.0) + 1.0  # one form: mscale = 0.1 ln s + 1
    assert attention.scaling == pytest.approx((8 + 4) ** -0.5 * mscale**2)
    plain = hf.DeepseekV3RotaryEmbedding(tiny_config()).inv_freq
    stretched = hf.DeepseekV3RotaryEmbedding(config).inv_freq
    assert stretched[0] == plain[0] and stretched[-1] < plain[-1]  # the fast pair kept, the slow one stretched


# ------------------------------------------------------------------ lessons 01, 03, 04: the cache
def test_the_cache_holds_the_latent_and_the_rope_key():
    """03, 04: transformers 5.24 caches the normalized latent (as the layer's keys, kv_lora_rank wide) and the
    rotated rope key (as its values, qk_rope_head_dim wide) in one-head entries, and expands K and V from
    all of it at every forward (DeepseekV3Attention.expand_kv). Not the expanded per-head K and V."""
    model = tiny_model()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, use_cache=True, cache=cache)
        latent = model.model.layers[0].self_attn.kv_a_layernorm(
            model.model.layers[0].self_attn.kv_a_proj_with_mqa(model.model.layers[0].input_layernorm(
                model.model.embed_tokens(ids)))[..., :8])
    layer = cache.layers[0]
    assert tuple(layer.keys.shape) == (1, 1, 5, 8) and tuple(layer.values.shape) == (1, 1, 5, 4)
    torch.testing.assert_close(layer.keys[:, 0], latent)  # the normalized latent itself
    assert "expand_kv" in inspect.getsource(hf.DeepseekV3Attention.forward)


def test_static_and_dynamic_caches_exist():
    """01: transformers offers a growing DynamicCache and a preallocated StaticCache."""
    assert inspect.isclass(DynamicCache) and inspect.isclass(StaticCache)


# ------------------------------------------------------------------ lessons 07-10: MTP
def test_mtp_weights_are_ignored_and_no_mtp_module_is_built():
    """07, 08, 10: DeepseekV3ForCausalLM builds num_hidden_layers decoder layers and no MTP module, and ignores
    model.layers.61.* on load, so it can neither load nor use the MTP module to draft tokens."""
    model = tiny_model(num_nextn_predict_layers=1)
    assert len(model.model.layers) == model.config.num_hidden_layers
    names = [name for name, _ in model.named_parameters()]
    assert not any(part in name for name in names for part in ("eh_proj", "enorm", "hnorm", "shared_head"))
    patterns = hf.DeepseekV3PreTrainedModel._keys_to_ignore_on_load_unexpected
    assert any(re.fullmatch(p, "model.layers.61.eh_proj.weight") for p in patterns)
