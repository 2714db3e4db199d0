"""The placeholder skeleton: exact counts, no weights, a compact tree, and the real module names."""

import pytest
import torch

from dsv3_edu.accounting import count_parameters
from dsv3_edu.config import ModelConfig
from dsv3_edu.skeleton import DeepSeekV3Skeleton, Placeholder


def test_deepseek_v3_skeleton_counts_without_weights():
    skeleton = DeepSeekV3Skeleton()
    counts = count_parameters(ModelConfig.deepseek_v3())
    assert skeleton.n_params() == counts["total"] == 671_026_404_352
    assert skeleton.n_active() == counts["active"]
    assert skeleton.n_params(include_mtp=True) == counts["total_with_mtp"]
    assert sum(p.numel() for p in skeleton.parameters()) == 0  # nothing allocated
    assert len(skeleton.layers) == 61 and len(skeleton.mtp) == 1
    assert [layer.is_moe for layer in skeleton.layers[:4]] == [False, False, False, True]


def test_tree_collapses_identical_layers():
    tree = DeepSeekV3Skeleton().tree()
    assert "layers 0..2" in tree and "3 x dense decoder layer" in tree
    assert "layers 3..60" in tree and "58 x MoE decoder layer" in tree
    assert "layers.4" not in tree and tree.count("self_attn") == 2  # one per run; the MTP layer is one line
    assert "671,026,404,352 parameters, 37,552,282,624 active" in tree
    assert "11,610,067,968" in tree
    assert "MLA" in tree and "03 (RoPE 02, decoding 04)" in tree and "mtp.0" in tree
    tiny = DeepSeekV3Skeleton(ModelConfig.tiny()).tree()
    assert "layers.0" in tiny and "layers 1..2" in tiny and "217,728 parameters" in tiny


def test_placeholders_point_to_their_lesson():
    skeleton = DeepSeekV3Skeleton(ModelConfig.tiny())
    with pytest.raises(NotImplementedError, match="built in lesson 03"):
        skeleton.layers[0].self_attn(torch.zeros(1))
    with pytest.raises(NotImplementedError, match="lesson 09"):
        skeleton(torch.zeros(1, dtype=torch.long))
    assert "05 (bias 06)" in repr(skeleton.layers[1].mlp)


def test_module_names_and_sizes_match_transformers():
    transformers = pytest.importorskip("transformers")
    config = ModelConfig.tiny()
    hf_config = transformers.DeepseekV3Config(**config.to_hf(rope_layout="transformers"))
    with torch.device("meta"):
        hf = transformers.DeepseekV3ForCausalLM(hf_config)
    hf_params = dict(hf.named_parameters())
    skeleton = DeepSeekV3Skeleton(config)
    for name, placeholder in skeleton.placeholders():
        prefix = name if name == "lm_head" else f"model.{name}"
        n = sum(p.numel() for k, p in hf_params.items() if k == f"{prefix}.weight" or k.startswith(f"{prefix}."))
        assert n == placeholder.n_params, name
    assert isinstance(skeleton.layers[2].mlp, Placeholder)
