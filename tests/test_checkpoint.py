"""Checkpoints: the released layout on disk, exact round trips (single file and shards), one clear error
for a checkpoint that does not fit, pickle refusal, atomic saves, and the MTP variants load_pretrained meets."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import dsv3_edu
from dsv3_edu import checkpoint
from dsv3_edu.checkpoint import CheckpointMismatchError, load_pretrained, save_pretrained, to_checkpoint_state
from dsv3_edu.config import ModelConfig
from dsv3_edu.model import DeepSeekV3

YARN = {"type": "yarn", "factor": 8, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 64}


def make_model(seed=0, **overrides) -> DeepSeekV3:
    """A tiny model with every tensor random, the balancing biases and norm weights included."""
    torch.manual_seed(seed)
    model = DeepSeekV3(ModelConfig.tiny(**overrides))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("norm.weight") or name.endswith("e_score_correction_bias"):
                t.uniform_(-0.5, 1.5)
    return model.eval()


def assert_same_model(a: DeepSeekV3, b: DeepSeekV3) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def on_disk_names(directory) -> set[str]:
    return set(checkpoint.read_checkpoint_tensors(directory))


# --------------------------------------------------------------------------------- layout
def test_released_layout_names(tmp_path):
    model = make_model(num_nextn_predict_layers=2)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    names = on_disk_names(tmp_path)
    L = model.config.num_hidden_layers
    assert not any(n.startswith("mtp.") for n in names)
    for k in range(2):
        for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                     "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_a_proj.weight",
                     "self_attn.kv_a_proj_with_mqa.weight", "self_attn.kv_b_proj.weight", "mlp.gate.weight",
                     "mlp.gate.e_score_correction_bias", "mlp.experts.7.down_proj.weight",
                     "mlp.shared_experts.up_proj.weight"):
            assert f"model.layers.{L + k}.{part}" in names
        # shared with the main model: not duplicated by default
        assert f"model.layers.{L + k}.embed_tokens.weight" not in names
        assert f"model.layers.{L + k}.shared_head.head.weight" not in names
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.experts.0.gate_proj.weight"):
        assert name in names
    assert len(names) == len(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == model.config.to_hf()
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["num_nextn_predict_layers"] == 2


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None, "num_nextn_predict_layers": 2},
                                       {"rope_scaling": YARN}])
def test_round_trip_single_file_is_exact(tmp_path, overrides):
    model = make_model(**overrides)
    save_pretrained(model, tmp_path)
    loaded = dsv3_edu.load_pretrained(tmp_path)
    assert_same_model(model, loaded)
    assert not loaded.training
    ids = torch.randint(0, 260, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_round_trip_sharded_is_exact(tmp_path):
    model = make_model(num_nextn_predict_layers=1)
    save_pretrained(model, tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (tmp_path / "model.safetensors").exists()
    state = to_checkpoint_state(model)
    assert index["weight_map"].keys() == state.keys() and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # every shard respects the limit unless it holds a single bigger tensor
        tensors = load_file(tmp_path / shard)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 100_000 or len(tensors) == 1
    assert_same_model(model, load_pretrained(tmp_path))


def test_resave_replaces_the_other_layout(tmp_path):
    a, b = make_model(0), make_model(1)
    save_pretrained(a, tmp_path, max_shard_size=50_000)
    save_pretrained(b, tmp_path)  # single file: the old shards and index must go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_model(b, load_pretrained(tmp_path))
    save_pretrained(a, tmp_path, max_shard_size="0.05MB")  # and back
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_model(a, load_pretrained(tmp_path))


def test_shard_size_parsing():
    assert checkpoint._parse_size("10MB") == 10_000_000
    assert checkpoint._parse_size("2GiB") == 2 * 2**30
    assert checkpoint._parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        checkpoint._parse_size("lots")


# ----------------------------------------------------------------- shared copies of the release
def test_shared_copies_are_written_on_request_and_checked(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path, write_shared_copies=True)
    names = on_disk_names(tmp_path)
    L = model.config.num_hidden_layers
    assert {f"model.layers.{L}.embed_tokens.weight", f"model.layers.{L}.shared_head.head.weight"} <= names
    loaded = load_pretrained(tmp_path)
    assert_same_model(model, loaded)
    assert loaded.mtp[0].state_dict().keys() == model.mtp[0].state_dict().keys()  # no copy kept in memory

    state = load_file(tmp_path / "model.safetensors")
    state[f"model.layers.{L}.shared_head.head.weight"][0, 0] += 1.0
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="differ from the main ones"):
        load_pretrained(tmp_path)
    assert load_pretrained(tmp_path, num_nextn_predict_layers=0).config.num_nextn_predict_layers == 0


# ------------------------------------------------------------------------------ MTP variants
def test_checkpoint_without_mtp_weights(tmp_path):
    """What transformers writes: the main model only, but a config that says num_nextn_predict_layers=1."""
    model = make_model(num_nextn_predict_layers=0)
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_nextn_predict_layers=0"):
        load_pretrained(tmp_path)
    main_only = load_pretrained(tmp_path, num_nextn_predict_layers=0)
    assert_same_model(model, main_only)
    with pytest.warns(UserWarning, match="random initialization"):
        with_mtp = load_pretrained(tmp_path, allow_random_mtp=True)
    assert len(with_mtp.mtp) == 1
    ids = torch.randint(0, 260, (1, 8))
    with torch.no_grad():
        assert torch.equal(with_mtp(ids).logits, model(ids).logits)


def test_dropping_mtp_modules_by_override(tmp_path):
    model = make_model(num_nextn_predict_layers=2)
    save_pretrained(model, tmp_path)
    for D in (0, 1):
        loaded = load_pretrained(tmp_path, num_nextn_predict_layers=D)
        assert len(loaded.mtp) == D
        for name, t in loaded.state_dict().items():
            assert torch.equal(t, model.state_dict()[name])


def test_reads_fused_experts_and_trainer_names(tmp_path):
    """transformers 5 fuses experts in memory (gate_up_proj (E, 2f, d), down_proj (E, d, f)); dsv3_edu.train
    writes the in-memory names (mtp.{k}.*). Both load to the same model."""
    model = make_model()
    save_pretrained(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    E = model.config.n_routed_experts
    fused = {}
    for name, t in state.items():
        if ".mlp.experts." not in name:
            fused[name] = t
    for i in range(model.config.first_k_dense_replace, model.config.num_hidden_layers + 1):
        p = f"model.layers.{i}.mlp.experts"
        fused[f"{p}.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{p}.{j}.gate_proj.weight"], state[f"{p}.{j}.up_proj.weight"]]) for j in range(E)])
        fused[f"{p}.down_proj"] = torch.stack([state[f"{p}.{j}.down_proj.weight"] for j in range(E)])
    save_file(fused, tmp_path / "model.safetensors")
    assert_same_model(model, load_pretrained(tmp_path))

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    assert_same_model(model, load_pretrained(tmp_path))


def test_trainer_checkpoint_resaves_in_released_layout(tmp_path):
    """dsv3_edu.train writes this package's names; load_pretrained reads them, save_pretrained re-saves."""
    model = make_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    model.config.save(tmp_path / "config.json")
    save_pretrained(load_pretrained(tmp_path), tmp_path / "out")
    assert not any(n.startswith("mtp.") for n in on_disk_names(tmp_path / "out"))
    assert_same_model(model, load_pretrained(tmp_path / "out"))


# --------------------------------------------------------------------------------- errors
def test_one_clear_error_for_missing_unexpected_and_misshaped(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.2.mlp.experts.3.up_proj.weight"]
    del state["model.layers.3.eh_proj.weight"]  # the MTP module's
    state["model.layers.0.self_attn.rotary.bogus"] = torch.zeros(3)
    state["model.norm.weight"] = torch.ones(65)
    state["model.layers.1.self_attn.kv_b_proj.weight"] = torch.zeros(128, 16)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(tmp_path)
    err = info.value
    text = str(err)
    assert "missing (2)" in text and "unexpected (1)" in text and "mis-shaped (2)" in text
    assert "model.layers.2.mlp.experts.3.up_proj.weight  expected (32, 64)" in text
    assert "model.layers.3.eh_proj.weight  expected (64, 128)" in text  # named as on disk
    assert "model.layers.0.self_attn.rotary.bogus  got (3,)" in text
    assert "model.norm.weight  expected (64,), got (65,)" in text
    assert "model.layers.1.self_attn.kv_b_proj.weight  expected (128, 32), got (128, 16)" in text
    assert len(err.missing) == 2 and len(err.unexpected) == 1 and len(err.mismatched) == 2


def test_config_that_does_not_fit_the_weights(tmp_path):
    save_pretrained(make_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["kv_lora_rank"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"kv_a_proj_with_mqa.weight  expected \(24, 64\), got \(40, "):
        load_pretrained(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    make_model().config.save(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="No weights"):
        load_pretrained(tmp_path)


class Payload:
    """Any object a pickle would rebuild by calling code: weights_only=True refuses it."""

    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickles_only_with_weights_only(tmp_path, capsys):
    model = make_model()
    model.config.save(tmp_path / "config.json")
    torch.save(to_checkpoint_state(model), tmp_path / "pytorch_model.bin")
    assert_same_model(model, load_pretrained(tmp_path))  # plain tensors: fine

    state = to_checkpoint_state(model)
    torch.save({**state, "evil": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="Refusing to load .*pytorch_model.bin.*weights_only=True"):
        load_pretrained(tmp_path)
    assert "this would have run" not in capsys.readouterr().out


# --------------------------------------------------------------------------------- atomic saves
@pytest.mark.parametrize("shard", [None, "60KB"])
def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch, shard):
    old, new = make_model(0), make_model(1)
    save_pretrained(old, tmp_path, max_shard_size=shard)
    before = sorted(p.name for p in tmp_path.iterdir())
    calls = []

    def crash_midway(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2 or shard is None:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt("power cut")
        save_file(tensors, path, metadata)

    monkeypatch.setattr(checkpoint, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(new, tmp_path, max_shard_size=shard)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left behind
    assert_same_model(old, load_pretrained(tmp_path))


def test_yarn_config_in_both_layouts(tmp_path):
    model = make_model(rope_scaling=YARN)
    for layout in ("released", "transformers"):
        save_pretrained(model, tmp_path / layout, rope_layout=layout)
        raw = json.loads((tmp_path / layout / "config.json").read_text())
        assert ("rope_scaling" in raw) == (layout == "released")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing ignored: everything we write, we read
            loaded = load_pretrained(tmp_path / layout, attn_impl="absorbed")
        assert loaded.config == model.config.replace(attn_impl="absorbed")
        ids = torch.randint(0, 260, (1, 12))
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
