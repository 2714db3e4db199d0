"""What the pinned transformers (5.24) does, as lessons 07-10 state it: MTP generation, the hidden state
the MTP drafter reads, the concatenation order, and what DeepseekV3's cache holds."""

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, DynamicCache, GenerationConfig  # noqa: E402
from transformers.generation.candidate_generator import MTPCandidateGenerator  # noqa: E402
from transformers.modeling_layers import MtpLayer, MtpModel  # noqa: E402

from dsv3_edu.accounting import deployment  # noqa: E402

transformers.logging.set_verbosity_error()

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
            num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=32,
            kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=128,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(DeepseekV3Config(**TINY, attn_implementation="eager")).eval()


def test_version_is_the_one_the_lessons_cite():
    assert transformers.__version__ == "5.24.0"


def test_mtp_module_dropped_on_load_and_generation_can_use_it(hf):
    assert DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected == [r"model\.layers\.61.*"]
    assert GenerationConfig(use_mtp=True).use_mtp is True  # generate(..., use_mtp=True) exists
    assert hf.config.num_mtp_layers == hf.config.num_nextn_predict_layers == 1  # alias of the released key
    source = inspect.getsource(MTPCandidateGenerator.__init__)
    assert "MtpModel.from_pretrained(main_model" in source  # the module is read back from the checkpoint files


def test_mtp_layer_concatenates_embedding_first():
    # [enorm(Emb); hnorm(h)], the order of the released eh_proj (and of vLLM and dsv3_edu)
    source = inspect.getsource(MtpLayer.forward)
    assert "torch.cat([self.enorm(inputs_embeds), self.hnorm(previous_hidden_state)], dim=-1)" in source
    # the checkpoint's shared_head.norm becomes MtpLayer.post_norm, applied after the block
    assert "self.post_norm(hidden_states)" in inspect.getsource(MtpLayer.forward)


def test_mtp_model_shares_embedding_and_head_with_the_main_model(hf):
    mtp = MtpModel(hf, 1)
    assert mtp.embed_tokens is hf.get_input_embeddings() and mtp.shared_head is hf.lm_head
    assert [n for n, _ in mtp.layers[0].named_children()] == ["enorm", "hnorm", "eh_proj", "mtp_block", "post_norm"]


def test_mtp_drafter_reads_the_hidden_state_after_the_final_norm(hf):
    # MTPCandidateGenerator feeds model_outputs.hidden_states[-1]; in 5.24 that is the normed last_hidden_state.
    assert "model_outputs.hidden_states[-1]" in inspect.getsource(MTPCandidateGenerator.get_candidates)
    ids = torch.randint(0, TINY["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(0))
    captured = {}
    hook = hf.model.layers[-1].register_forward_hook(lambda m, a, out: captured.setdefault("pre", out))
    with torch.no_grad():
        out = hf.model(ids, output_hidden_states=True)
    hook.remove()
    pre = captured["pre"][0] if isinstance(captured["pre"], tuple) else captured["pre"]
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(out.last_hidden_state, hf.model.norm(pre))
    assert not torch.allclose(out.hidden_states[-1], pre)


def test_cache_holds_the_normalized_latent_and_rotated_rope_key(hf):
    ids = torch.randint(0, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(ids, cache=cache, use_cache=True)
    layer = cache.layers[0]
    assert tuple(layer.keys.shape) == (2, 1, 7, TINY["kv_lora_rank"])  # one "head": the latent c^KV
    assert tuple(layer.values.shape) == (2, 1, 7, TINY["qk_rope_head_dim"])  # k^R, shared by all heads
    attn = hf.model.layers[0].self_attn
    with torch.no_grad():
        h = hf.model.layers[0].input_layernorm(hf.model.embed_tokens(ids))
        latent = attn.kv_a_layernorm(attn.kv_a_proj_with_mqa(h)[..., : TINY["kv_lora_rank"]])
    torch.testing.assert_close(layer.keys[:, 0], latent)
    # and K, V are expanded from it at every forward: the naive path, no absorption
    assert "expand_kv" in inspect.getsource(type(attn).forward)


def test_deployment_counts_mtp_and_headroom():
    base = deployment()
    mtp = deployment(mtp=True)
    both = deployment(mtp=True, headroom_gib=4)
    assert mtp.weight_bytes > base.weight_bytes
    assert mtp.mla_per_token * 61 == base.mla_per_token * 62  # one more cached attention layer
    assert both.capacity_bytes == mtp.capacity_bytes - 8 * 4 * 2**30
    assert (base.max_batch("mla"), mtp.max_batch("mla"), both.max_batch("mla")) == (45, 43, 39)
    with pytest.raises(ValueError, match="headroom_gib"):
        deployment(headroom_gib=-1)
    with pytest.raises(ValueError, match="leaves nothing"):
        deployment(gpu_gib=8, headroom_gib=8)
