"""Agreement with an independent implementation: transformers' DeepseekV3ForCausalLM.

Tiny random models are built by transformers, saved with its save_pretrained, loaded with
dsv3_edu.load_pretrained, and must give the same logits (fp32, max abs diff <= 1e-4) on both MLA paths
and the same greedy tokens. The configurations cover: no query latent (q_lora_rank None), one group and
several groups, norm_topk_prob False, no dense layer (first_k_dense_replace 0), YaRN, and negative
balancing biases set by hand (where masking dropped groups with 0.0 instead of -inf goes wrong).
The other way round: our save_pretrained loads in transformers (which ignores the MTP module).
"""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

from dsv3_edu import generate, load_pretrained  # noqa: E402
from dsv3_edu.checkpoint import save_pretrained  # noqa: E402
from dsv3_edu.config import ModelConfig  # noqa: E402
from dsv3_edu.model import DeepSeekV3  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

BASE = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
    n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=32, qk_rope_head_dim=8,
    qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=256, initializer_range=0.1,
    routed_scaling_factor=2.5, bos_token_id=None, eos_token_id=None, pad_token_id=None,
)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
CASES = {
    "no_q_lora_one_group": dict(q_lora_rank=None, n_group=1, topk_group=1),
    "groups_unnormalized": dict(n_group=4, topk_group=2, norm_topk_prob=False),
    "all_moe_yarn": dict(first_k_dense_replace=0, rope_parameters=YARN, n_group=2, topk_group=1),
}


def set_biases(model: torch.nn.Module, seed: int) -> None:
    """Balancing biases by hand, mostly negative, some strongly: selection must still follow s + b."""
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buf.copy_(torch.rand(buf.shape, generator=g) * -1.0 + 0.1)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(transformers model, dsv3_edu model loaded from transformers' save_pretrained)."""
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**{**BASE, **CASES[request.param]}, attn_implementation="eager"))
    with torch.no_grad():
        set_biases(hf, 1)
    hf.eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config keys that do not change the model (bos/eos ids, dtype, ...)
        ours = load_pretrained(path, num_nextn_predict_layers=0)
    return hf, ours


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("impl", ["naive", "absorbed"])
def test_logits_agree(pair, impl):
    hf, ours = pair
    ids = torch.randint(0, 96, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids, attn_impl=impl).logits
    assert want.abs().max() > 1.0  # not a degenerate comparison
    assert max_diff(got, want) <= 1e-4


def test_greedy_tokens_agree(pair):
    hf, ours = pair
    prompt = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                       pad_token_id=0)
    for impl in ("naive", "absorbed"):
        assert torch.equal(generate(ours, prompt, 24, attn_impl=impl), want)


def test_our_checkpoint_loads_in_transformers(tmp_path):
    """Our save_pretrained (MTP module included, at model.layers.{L}) -> transformers: equal logits and tokens."""
    torch.manual_seed(0)
    yarn = {"type": "yarn", "factor": 4.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 64}
    ours = DeepSeekV3(ModelConfig.tiny(initializer_range=0.1, rope_scaling=yarn, num_nextn_predict_layers=1))
    with torch.no_grad():
        set_biases(ours, 2)
    save_pretrained(ours.eval(), tmp_path)
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", eos_token_id=None).eval()
    assert sum(p.numel() for p in hf.parameters()) == sum(
        p.numel() for n, p in ours.named_parameters() if not n.startswith("mtp."))  # MTP ignored, nothing else
    ids = torch.randint(0, 260, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= 1e-4
    prompt = ids[:1, :6]
    want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                       pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 24), want)


def test_fused_expert_checkpoint_loads(tmp_path):
    """transformers can also save its in-memory layout (save_original_format=False): experts fused as
    mlp.experts.gate_up_proj (E, 2f, d) and mlp.experts.down_proj (E, d, f). load_pretrained unfuses them."""
    from safetensors import safe_open

    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**BASE, attn_implementation="eager"))
    with torch.no_grad():
        set_biases(hf, 4)
    hf.eval().save_pretrained(tmp_path, save_original_format=False)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "model.layers.1.mlp.experts.gate_up_proj" in f.keys()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_pretrained(tmp_path, num_nextn_predict_layers=0)
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= 1e-4
