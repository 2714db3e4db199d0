"""Issue 10's bad inputs, one by one: each gets a clear error saying what is wrong (or a correct result).

Grouped as the issue lists them: configs, checkpoints, model, generation, command lines and runs.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import small_data

import dsv3_edu.train as T
from dsv3_edu import ModelConfig
from dsv3_edu.checkpoint import CheckpointMismatchError, load_pretrained, save_pretrained
from dsv3_edu.config import resolve_dtype
from dsv3_edu.generate import generate, sample_next, speculative_generate
from dsv3_edu.model import DeepSeekV3

torch.set_num_threads(1)
SHIPPED = T.Path(__file__).resolve().parent.parent / "data" / "tiny-dsv3"


# ------------------------------------------------------------------------------------------- configs


def tiny_hf(**changes):
    raw = ModelConfig.tiny().to_hf()
    raw.update(changes)
    return raw


@pytest.mark.parametrize("raw, match", [
    ({"hidden_size": 64}, r"lacks vocab_size, num_hidden_layers, .*fix the weights' shapes"),
    ({k: v for k, v in tiny_hf(num_hidden_layer=3).items() if k != "num_hidden_layers"},
     r"lacks num_hidden_layers.*'num_hidden_layer' \(did you mean 'num_hidden_layers'\?\)"),
    (tiny_hf(norm_topk_prob="false"), r"norm_topk_prob='false': must be true or false, not a string"),
    (tiny_hf(rope_interleave="no"), r"rope_interleave='no': must be true or false"),
    (tiny_hf(rope_theta="10000"), r"rope_theta='10000': must be a number, not a string. Write 10000 without quotes"),
    (tiny_hf(routed_scaling_factor=math.inf), r"routed_scaling_factor=inf: must be a finite number above 0"),
    (tiny_hf(routed_scaling_factor=math.nan), r"routed_scaling_factor=nan: must be a finite number"),
    (tiny_hf(hidden_size="64"), r"hidden_size='64': must be a whole number, not a string"),
    (tiny_hf(rope_scaling={"type": "yarn", "factor": "4", "original_max_position_embeddings": 64}),
     r"rope_scaling factor='4': must be a finite number"),
])
def test_from_hf_rejects(raw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf(raw)


def test_from_hf_reports_typos_apart_from_known_unused_keys():
    with pytest.warns(UserWarning) as record:
        assert ModelConfig.from_hf(tiny_hf(num_hiden_layers=5, use_cache=True)) == ModelConfig.tiny()
    messages = [str(w.message) for w in record]
    assert any("does not know these keys (typos?)" in m and "num_hiden_layers (did you mean num_hidden_layers?)" in m
               for m in messages)
    assert any("ignores keys that do not change the model: use_cache" in m for m in messages)


def test_from_hf_reads_a_broken_file_by_name(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        ModelConfig.from_hf(tmp_path)


@pytest.mark.parametrize("call, match", [
    (lambda: ModelConfig.tiny(hiden_size=32), r"no field hiden_size \(did you mean hidden_size\?\)"),
    (lambda: ModelConfig.tiny().replace(n_routed_expert=4), r"did you mean n_routed_experts"),
    (lambda: ModelConfig.from_hf(tiny_hf(), atn_impl="absorbed"), r"did you mean attn_impl"),
    (lambda: ModelConfig.tiny(norm_topk_prob=1), r"norm_topk_prob=1: must be true or false, not a int"),
])
def test_config_keyword_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name, want", [
    ("float16", torch.float16), ("fp16", torch.float16), ("half", torch.float16), ("bf16", torch.bfloat16),
    ("bfloat16", torch.bfloat16), ("torch.bfloat16", torch.bfloat16), ("float32", torch.float32),
    ("FP32", torch.float32), (torch.float16, torch.float16), (torch.float64, torch.float64),
])
def test_dtype_names(name, want):
    assert resolve_dtype(name) is want


@pytest.mark.parametrize("name", ["int8", "float8", torch.int32, torch.float8_e4m3fn, 16, None, "cuda"])
def test_bad_dtype_names_list_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"use one of bfloat16, float16, float32, float64"):
        resolve_dtype(name)


# --------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.tiny())
    save_pretrained(model, folder)
    return folder, model


def copy_of(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    return folder


@pytest.mark.parametrize("size", [0, 7, 1000, -100])  # empty, inside the header, inside the data, last bytes cut
def test_truncated_safetensors_named(size, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:size])
    with pytest.raises(ValueError, match=r"Cannot read .*model.safetensors .*not a complete safetensors file"):
        load_pretrained(folder)


def test_non_json_config_named(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "config.json").write_text("hidden_size: 64\n")
    with pytest.raises(ValueError, match=r"copy/config.json is not valid JSON"):
        load_pretrained(folder)


@pytest.mark.parametrize("index", [{}, {"weight_map": ["model.safetensors"]}, "not json"])
def test_index_without_weight_map(index, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(ValueError, match=r"model.safetensors.index.json (has no \"weight_map\"|is not valid JSON)"):
        load_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e4m3fn])
def test_non_float_tensors_refused(dtype, saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].to(dtype)
    save_file(state, folder / "model.safetensors")
    match = r"wrong dtype \(1\):\n    lm_head.weight  expected float32"
    with pytest.raises(CheckpointMismatchError, match=match) as err:
        load_pretrained(folder)
    assert err.value.wrong_dtype == [("lm_head.weight", "float32", str(dtype).removeprefix("torch."))]


def test_other_float_dtypes_still_load(saved, tmp_path):  # bf16 weights in the file: a cast, not an error
    folder = copy_of(saved, tmp_path)
    state = {k: v.to(torch.bfloat16) for k, v in load_file(folder / "model.safetensors").items()}
    save_file(state, folder / "model.safetensors")
    model = load_pretrained(folder)
    torch.testing.assert_close(model.lm_head.weight, saved[1].lm_head.weight.bfloat16().float())


@pytest.mark.parametrize("dtype", ["float16", "bf16", torch.float16])
def test_load_pretrained_dtype_names(dtype, saved):
    model = load_pretrained(saved[0], dtype=dtype)
    assert model.lm_head.weight.dtype == resolve_dtype(dtype)


def test_load_pretrained_bad_dtype(saved):
    with pytest.raises(ValueError, match=r"dtype='int8' is not a floating-point dtype"):
        load_pretrained(saved[0], dtype="int8")


def test_shape_override_names_the_cause():
    with pytest.raises(ValueError) as err:
        load_pretrained(SHIPPED, num_hidden_layers=2)
    message = str(err.value)
    assert "num_hidden_layers=2: the checkpoint" in message and "has num_hidden_layers=4" in message
    assert len(message.splitlines()) <= 3 and "MTP" not in message.split(".")[0]


def test_mismatch_errors_are_bounded_and_say_the_likely_cause(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    raw["num_hidden_layers"] = 2  # config.json itself disagrees with the weights
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(folder)
    lines = str(err.value).splitlines()
    assert len(lines) <= 20 and len(err.value.unexpected) > 20  # counts and a few names, not every tensor
    assert "  unexpected (42, first 3):" in lines
    assert lines[-1] == ("Likely cause: the checkpoint has 3 decoder layers (+1 MTP), the config asks for "
                         "num_hidden_layers=2.")


def test_hidden_size_mismatch_cause(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    raw["hidden_size"] = 32
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint has hidden_size 64 \(model.embed_tokens.weight"):
        load_pretrained(folder)


def test_shipped_model_loads_unchanged():
    model = load_pretrained(SHIPPED)
    assert model.config.num_hidden_layers == 4 and sum(p.numel() for p in model.parameters()) == 1_393_888


# --------------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.tiny()).eval()


IDS = torch.randint(0, 260, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("inputs, labels, error, match", [
    (torch.zeros(1, 0, dtype=torch.long), None, ValueError, r"shape \(1, 0\): give at least one sequence"),
    (torch.zeros(0, 4, dtype=torch.long), None, ValueError, r"shape \(0, 4\)"),
    ([[1, 2, 3]], None, TypeError, r"must be a torch.Tensor of token ids.*got a list"),
    (torch.tensor([1, 2, 3]), None, ValueError, r"got shape \(3,\). Add the batch dimension"),
    (torch.ones(1, 3), None, TypeError, r"integer token ids \(torch.long\), got torch.float32"),
    (torch.tensor([[1, 260]]), None, ValueError, r"ids outside \[0, 260\): min 1, max 260"),
    (IDS, torch.full((2, 8), 300), ValueError, r"labels has 16 id\(s\) outside \[0, 260\)"),
    (IDS, torch.full((2, 8), -5), ValueError, r"labels has 16 id\(s\) outside"),
    (IDS, torch.full((2, 8), -100), ValueError, r"every label after the first position is -100"),
    (IDS, IDS.tolist(), TypeError, r"labels must be a torch.Tensor"),
    (IDS, IDS[:, :4], ValueError, r"must have the shape of input_ids"),
    (IDS[:, :1], IDS[:, :1], ValueError, r"a loss needs at least 2 positions"),
])
def test_model_inputs(model, inputs, labels, error, match):
    with pytest.raises(error, match=match):
        model(inputs, labels=labels)


def test_short_inputs_give_correct_results(model):
    one = model(IDS[:, :1])  # one position: logits, and no MTP positions (it used to crash in a reshape)
    torch.testing.assert_close(one.logits[:, 0], model(IDS).logits[:, 0])  # causal: the same first position
    assert one.mtp_logits[0].shape == (2, 0, 260)


def test_partly_ignored_labels(model):
    labels = torch.full_like(IDS, -100)
    labels[:, 1] = IDS[:, 1]  # only the main loss has a target; MTP depth 1 (targets from position 2) has none
    out = model(IDS, labels=labels)
    assert math.isfinite(out.loss.item()) and out.mtp_losses[0].item() == 0.0
    expected = torch.nn.functional.cross_entropy(out.logits[:, 0], IDS[:, 1])
    torch.testing.assert_close(out.main_loss, expected)
    torch.testing.assert_close(out.loss, out.main_loss)


# ---------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=1.0, top_k=0), r"top_k=0: use a whole number of at least 1"),
    (dict(temperature=1.0, top_k=-3), r"top_k=-3"),
    (dict(temperature=1.0, top_k=2.5), r"top_k=2.5"),
    (dict(temperature=1.0, top_k=True), r"top_k=True"),
    (dict(temperature=math.nan), r"temperature=nan: use 0 \(greedy\) or a positive finite number"),
    (dict(temperature=math.inf), r"temperature=inf"),
    (dict(temperature="0.7"), r"temperature='0.7'"),
    (dict(temperature=-1.0), r"temperature=-1.0"),
    (dict(eos_token_id=260), r"eos_token_id=260: use a token id in \[0, 260\)"),
    (dict(eos_token_id=-1), r"eos_token_id=-1"),
    (dict(eos_token_id=3.0), r"eos_token_id=3.0"),
])
def test_generation_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, IDS[:1, :4], 3, **kwargs)


def test_sample_next_checks_too():
    with pytest.raises(ValueError, match="top_k=0"):
        sample_next(torch.zeros(1, 5), temperature=1.0, top_k=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eos_token_id=1000), r"eos_token_id=1000"), (dict(max_new_tokens=-1), r"max_new_tokens=-1"),
])
def test_speculative_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        speculative_generate(model, IDS[:1, :4], **{"max_new_tokens": 3, **kwargs})


def test_generation_input_type(model):
    with pytest.raises(TypeError, match="got a list"):
        generate(model, [[1, 2]], 3)


# ---------------------------------------------------------------------------------- runs and the CLIs


@pytest.fixture(scope="module")
def data():
    return small_data(20, 4)


def smoke(**overrides):
    return T.preset("smoke", **{"eval_blocks_per_domain": 1, "batch_size": 2, "device": "cpu", **overrides})


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_is_never_overwritten(data, tmp_path):
    mc, tc = smoke(steps=2)
    T.train(mc, tc, out_dir=tmp_path, progress=False, **data)
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"holds a checkpoint at step 2. Pass resume=True \(--resume\)"):
        T.train(mc, tc.replace(seed=1), out_dir=tmp_path, progress=False, **data)
    assert snapshot(tmp_path) == before  # untouched
    model, _ = T.train(mc, tc.replace(seed=1), out_dir=tmp_path, progress=False, overwrite=True, **data)
    assert [s for s, _ in T.checkpoint_dirs(tmp_path)] == [2] and snapshot(tmp_path) != before
    torch.testing.assert_close(load_pretrained(tmp_path).state_dict(), model.state_dict(), rtol=0, atol=0)


def test_resume_without_a_checkpoint_is_refused(data, tmp_path):
    mc, tc = smoke(steps=2)
    with pytest.raises(FileNotFoundError, match=r"there is no such folder. Drop resume"):
        T.train(mc, tc, out_dir=tmp_path / "new", progress=False, resume=True, **data)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint. Drop resume"):
        T.train(mc, tc, out_dir=tmp_path / "empty", progress=False, resume=True, **data)
    with pytest.raises(ValueError, match=r"resume=True needs out_dir"):
        T.train(mc, tc, progress=False, resume=True, **data)


def test_the_shipped_model_is_not_a_resumable_run(data, tmp_path):
    copy = tmp_path / "tiny-dsv3"
    shutil.copytree(SHIPPED, copy)
    before = snapshot(copy)
    mc, tc = T.preset("tiny-dsv3", steps=1, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"holds a trained model without trainer state .* not a resumable run"):
        T.train(mc, tc, out_dir=copy, progress=False, resume=True)
    with pytest.raises(FileExistsError, match=r"holds a trained model without trainer state"):
        T.train(mc, tc, out_dir=copy, progress=False)
    assert snapshot(copy) == before


@pytest.mark.parametrize("change", [dict(lr=1e-3), dict(batch_size=3), dict(seed=5), dict(steps=6),
                                    dict(balance="aux_loss"), dict(mtp_lambda=0.1)])
def test_resume_with_a_changed_config_is_refused(change, data, tmp_path):
    mc, tc = smoke(steps=4)
    T.train(mc, tc, out_dir=tmp_path, progress=False, stop_at=2, **data)
    (field, value), = change.items()
    with pytest.raises(ValueError, match=rf"changed config: {field} {getattr(tc, field)!r} -> {value!r}.*"
                                         rf"--allow-change {field}"):
        T.train(mc, tc.replace(**change), out_dir=tmp_path, progress=False, resume=True, **data)


def test_resume_with_an_allowed_change(data, tmp_path):
    mc, tc = smoke(steps=2)
    T.train(mc, tc, out_dir=tmp_path, progress=False, **data)
    _, history = T.train(mc, tc.replace(steps=3, eval_every=1), out_dir=tmp_path, progress=False, resume=True,
                         allow_changes=["steps"], **data)  # eval_every never needs allowing
    assert [r["step"] for r in history] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"allow_changes: no TrainConfig or ModelConfig field stesp \(did you mean"):
        T.train(mc, tc, out_dir=tmp_path, progress=False, resume=True, allow_changes=["stesp"], **data)


def test_truncated_trainer_state_is_named(data, tmp_path):
    mc, tc = smoke(steps=4)
    T.train(mc, tc, out_dir=tmp_path, progress=False, stop_at=2, **data)
    state = tmp_path / "checkpoints" / "step-000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"Cannot read .*step-000002/trainer_state.pt: .*damaged"):
        T.train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)


@pytest.mark.parametrize("field, value", [("lr", math.inf), ("lr", math.nan), ("gamma", math.inf),
                                          ("mtp_lambda", math.nan), ("beta2", 1.0), ("lr", "0.1")])
def test_train_config_non_finite(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig.{field}="):
        T.TrainConfig(**{field: value})


def test_a_non_finite_loss_stops_before_saving(data, tmp_path):
    mc, tc = smoke(steps=4, save_every=1)
    torch.manual_seed(0)
    broken = DeepSeekV3(mc)
    with torch.no_grad():
        broken.model.embed_tokens.weight[:] = math.nan
    with pytest.raises(FloatingPointError, match=r"step 1: the loss is nan .* nothing of this step was saved"):
        T.train(mc, tc, out_dir=tmp_path / "a", model=broken, progress=False, **data)
    assert not T.has_checkpoint(tmp_path / "a")
    # A learning rate far too high: step 1 is finite (saved), its update overflows, step 2 is not.
    with pytest.raises(FloatingPointError, match=r"step 2: .*the newest checkpoint is step 1"):
        T.train(mc, tc.replace(lr=1e30), out_dir=tmp_path / "b", progress=False, **data)
    assert [s for s, _ in T.checkpoint_dirs(tmp_path / "b")] == [1]
    assert all(torch.isfinite(t).all() for t in load_pretrained(tmp_path / "b").state_dict().values())


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_on_the_next_start(data, tmp_path):
    mc, tc = smoke(steps=4)
    T.train(mc, tc, out_dir=tmp_path, progress=False, stop_at=2, **data)
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".model.safetensors.tmp-{dead}", tmp_path / "checkpoints" / f".tmp-step-000004-{dead}",
             tmp_path / "checkpoints" / f".old-step-000000-{dead}"]
    stale[0].write_bytes(b"half")
    for folder in stale[1:]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    busy = tmp_path / f".history.json.tmp-{alive}"  # a process that still runs: not ours to remove
    busy.write_text("[]")
    T.train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)
    assert not any(p.exists() for p in stale) and busy.exists()


def test_a_checkpoint_written_before_step_folders_resumes(data, tmp_path):
    mc, tc = smoke(steps=4)
    full, full_history = T.train(mc, tc, progress=False, **data)
    T.train(mc, tc, out_dir=tmp_path, progress=False, stop_at=2, **data)
    folder = tmp_path / "checkpoints" / "step-000002"  # rebuild the old layout: every file at the top
    for path in folder.iterdir():
        path.replace(tmp_path / path.name)
    shutil.rmtree(tmp_path / "checkpoints")
    assert T.latest_checkpoint(tmp_path) == tmp_path
    model, history = T.train(mc, tc, out_dir=tmp_path, progress=False, resume=True, **data)
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]
    torch.testing.assert_close(model.state_dict(), full.state_dict(), rtol=0, atol=0)
    assert not (tmp_path / "trainer_state.pt").exists() and [s for s, _ in T.checkpoint_dirs(tmp_path)] == [4]


@pytest.mark.parametrize("device, match", [
    ("nosuch", r"device='nosuch' is not a device name"), ("meta", r"device='meta' holds no data"),
    pytest.param("cuda", r"device='cuda': this torch build has no CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("cuda:7", r"this machine has \d CUDA device",
                 marks=pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() > 7,
                                          reason="needs CUDA with fewer than 8 devices")),
])
def test_bad_devices(device, match):
    with pytest.raises(ValueError, match=match):
        T.resolve_device(device)


@pytest.mark.parametrize("argv, match", [
    (["--threads", "0"], r"--threads: 0 is not a positive number"),
    (["--steps", "0"], r"--steps: 0 is not a positive number"),
    (["--lr", "inf"], r"--lr: inf must be a finite number above 0"),
    (["--device", "nosuch"], r"device='nosuch' is not a device name"),
    (["--resume"], r"--resume needs --out"),
    (["--out", "x", "--resume", "--overwrite"], r"choose one"),
])
def test_train_command_line_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        T.main(["--preset", "smoke", "--no-progress", *argv])
    assert exit_.value.code == 2 and re.search(match, capsys.readouterr().err)


def test_train_command_line_checks_the_folder_first(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(T, "DeepSeekV3", None)  # no model may be built before the check
    with pytest.raises(SystemExit):
        T.main(["--preset", "smoke", "--no-progress", "--out", str(tmp_path / "file")])
    assert "exists and is a file" in capsys.readouterr().err


@pytest.mark.parametrize("bench, argv, match", [
    ("balance", ["--steps", "0"], r"--steps: 0 is not a positive number"),
    ("balance", ["--threads", "0"], r"--threads: 0 is not a positive number"),
    ("balance", ["--json", "{file}/r.json"], r"cannot write the --json results"),
    ("mla", ["--json", "{dir}"], r"is a folder; give a file name"),
    ("mtp", ["--json", "{file}/r.json"], r"cannot write the --json results"),
])
def test_bench_command_lines_check_before_the_work(bench, argv, match, tmp_path, capsys, monkeypatch):
    import importlib

    module = importlib.import_module(f"dsv3_edu.bench.{bench}")

    def never(*args, **kwargs):
        raise AssertionError("the benchmark ran before its arguments were checked")

    monkeypatch.setattr(module, "run_all" if bench == "balance" else "run", never)
    (tmp_path / "f").write_text("x")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_no_warning_for_a_valid_run(data, tmp_path):
    mc, tc = smoke(steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        T.train(mc, tc, out_dir=tmp_path, progress=False, **data)
        load_pretrained(tmp_path)
