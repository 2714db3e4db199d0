"""ModelConfig: the released configuration, Hugging Face round trips, and every validation error."""

import json
import warnings

import pytest

from dsv3_edu import ModelConfig, kv_cache_bytes_per_token
from dsv3_edu.config import RELEASED_CONFIG_PATH

RELEASED = json.loads(RELEASED_CONFIG_PATH.read_text())


def test_deepseek_v3_preset_equals_released_config_json():
    config = ModelConfig.deepseek_v3()
    hf = config.to_hf()
    for key, value in hf.items():
        if key == "rope_interleave":  # not in the 2024 file: the official code always interleaves
            continue
        assert key in RELEASED, f"to_hf writes {key} which the released config.json lacks"
        assert RELEASED[key] == value, key
    with pytest.warns(UserWarning, match="quantization_config"):
        assert ModelConfig.from_hf(RELEASED_CONFIG_PATH) == config


def test_released_numbers_spot_check():
    # Written out independently of the JSON file (notebooks/REFERENCE.md section 1).
    c = ModelConfig.deepseek_v3()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (7168, 61, 128)
    assert (c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (
        1536, 512, 128, 64, 128)
    assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok, c.n_group, c.topk_group) == (
        256, 1, 8, 8, 4)
    assert c.rope_scaling["factor"] == 40 and c.rope_scaling["original_max_position_embeddings"] == 4096
    assert c.qk_head_dim == 192 and c.experts_per_group == 32


def test_kv_cache_bytes_released():
    c = ModelConfig.deepseek_v3()
    assert kv_cache_bytes_per_token(c, "mla") == 70_272  # (512 + 64) * 61 * 2
    assert kv_cache_bytes_per_token(c, "mha") == 40_960 * 61 * 2
    assert kv_cache_bytes_per_token(c, "mqa") == (192 + 128) * 61 * 2
    assert kv_cache_bytes_per_token(c, "gqa", n_groups=8) == 8 * (192 + 128) * 61 * 2


@pytest.mark.parametrize("preset", [ModelConfig.tiny, ModelConfig.deepseek_v3])
@pytest.mark.parametrize("layout", ["released", "transformers"])
def test_hf_round_trip(preset, layout, tmp_path):
    config = preset()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_hf(rope_layout=layout)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what to_hf writes, from_hf reads without complaint
        assert ModelConfig.from_hf(tmp_path) == config
        assert ModelConfig.from_hf(path) == config


def test_transformers_layout_is_what_transformers_writes():
    transformers = pytest.importorskip("transformers")
    hf = transformers.DeepseekV3Config(**{k: v for k, v in ModelConfig.deepseek_v3().to_hf().items()
                                          if k not in ("architectures", "model_type")})
    with pytest.warns(UserWarning, match="ignores keys"):
        assert ModelConfig.from_hf(hf.to_dict()) == ModelConfig.deepseek_v3()
    tiny = ModelConfig.tiny()
    hf = transformers.DeepseekV3Config(**tiny.to_hf(rope_layout="transformers"))
    with pytest.warns(UserWarning):
        assert ModelConfig.from_hf(hf.to_dict()) == tiny


def test_from_hf_overrides_and_missing_file(tmp_path):
    assert ModelConfig.from_hf(ModelConfig.tiny().to_hf(), attn_impl="absorbed").attn_impl == "absorbed"
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("scoring_func", "softmax", "scoring_func"),
        ("topk_method", "greedy", "topk_method"),
        ("hidden_act", "gelu", "hidden_act"),
        ("tie_word_embeddings", True, "tie_word_embeddings"),
        ("moe_layer_freq", 2, "moe_layer_freq"),
        ("model_type", "deepseek_v2", "model_type"),
    ],
)
def test_from_hf_rejects_what_it_cannot_honour(key, value, match):
    raw = ModelConfig.tiny().to_hf()
    raw[key] = value
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(raw)


def test_from_hf_rejects_other_rope_scaling():
    raw = ModelConfig.tiny().to_hf()
    raw["rope_scaling"] = {"type": "linear", "factor": 2.0}
    with pytest.raises(ValueError, match="YaRN"):
        ModelConfig.from_hf(raw)
    raw["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        ModelConfig.from_hf(raw)


def test_yarn_defaults_filled_like_transformers():
    c = ModelConfig.tiny(rope_scaling={"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 128})
    assert c.rope_scaling == {"type": "yarn", "factor": 4, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                              "mscale_all_dim": 0.0, "original_max_position_embeddings": 128}


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(n_routed_experts=10, n_group=4), "n_routed_experts"),
        (dict(topk_group=5, n_group=4), "topk_group"),
        (dict(num_experts_per_tok=5, n_group=4, topk_group=2), "num_experts_per_tok"),  # 2 groups x 2 experts
        (dict(first_k_dense_replace=4, num_hidden_layers=3), "first_k_dense_replace"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_attention_heads=-2), "num_attention_heads"),
        (dict(kv_lora_rank=0), "kv_lora_rank"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(q_lora_rank=0), "q_lora_rank"),
        (dict(n_shared_experts=-1), "n_shared_experts"),
        (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
        (dict(n_group=8, topk_group=2), "n_group"),  # 8 experts in 8 groups: no top-2 per group
        (dict(attn_impl="flash"), "attn_impl"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    ],
)
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        ModelConfig.tiny(**changes)


def test_edge_configs_are_valid():
    ModelConfig.tiny(n_group=1, topk_group=1)
    ModelConfig.tiny(q_lora_rank=None, n_shared_experts=0, first_k_dense_replace=0)
    ModelConfig.tiny(num_experts_per_tok=4, n_group=4, topk_group=2)  # exactly the reachable experts
    ModelConfig.tiny(first_k_dense_replace=3, num_hidden_layers=3)  # all dense


def test_kv_cache_bytes_errors():
    c = ModelConfig.tiny()
    with pytest.raises(ValueError, match="n_groups"):
        kv_cache_bytes_per_token(c, "gqa")
    with pytest.raises(ValueError, match="does not divide"):
        kv_cache_bytes_per_token(c, "gqa", n_groups=3)
    with pytest.raises(ValueError, match="attention="):
        kv_cache_bytes_per_token(c, "sparse")
    with pytest.raises(TypeError, match="torch.dtype"):
        kv_cache_bytes_per_token(c, "mla", dtype="bf16")
