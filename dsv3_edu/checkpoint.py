"""Checkpoints in the released layout: ``config.json`` plus safetensors named as DeepSeek-V3's.

On disk (notebooks/REFERENCE.md section 6) the main model's tensors keep the names of ``model.state_dict()``;
MTP module k (0-based) sits at ``model.layers.{num_hidden_layers + k}.`` with ``enorm``, ``hnorm``,
``eh_proj``, a decoder layer (``self_attn.*``, ``mlp.*``, norms) and ``shared_head.norm``. In this
package the MTP modules live at ``mtp.{k}``; the two functions here rename on the way out and in.

The MTP module shares the embedding and the output head with the main model ([V3] 2.2), so they are
written once. The release also stores copies (``model.layers.61.embed_tokens.weight`` and
``model.layers.61.shared_head.head.weight``); ``save_pretrained(..., write_shared_copies=True)`` writes
them too, and ``load_pretrained`` accepts them after checking they equal the main ones.

``load_pretrained`` also reads what transformers' ``DeepseekV3ForCausalLM.save_pretrained`` writes:
the same names, no MTP weights, and experts either per expert or fused (``mlp.experts.gate_up_proj``
(E, 2I, d) and ``mlp.experts.down_proj`` (E, d, I), as transformers 5 holds them in memory).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import SHAPE_KEYS, ModelConfig, read_config_json, resolve_dtype
from .files import write_temp
from .model import DeepSeekV3

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# The MTP module's copies of the shared tensors in the release, relative to model.layers.{L + k}.
SHARED_COPIES = {"embed_tokens.weight": "model.embed_tokens.weight", "shared_head.head.weight": "lm_head.weight"}


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model its config.json describes."""

    def __init__(self, message: str, missing: list, unexpected: list, mismatched: list, wrong_dtype: list = ()):
        super().__init__(message)
        self.missing = missing  # [(name, expected shape)]
        self.unexpected = unexpected  # [(name, shape)]
        self.mismatched = mismatched  # [(name, expected shape, got shape)]
        self.wrong_dtype = list(wrong_dtype)  # [(name, expected dtype, got dtype)]


# --------------------------------------------------------------------------------- renaming
def to_checkpoint_state(model: DeepSeekV3, write_shared_copies: bool = False) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the MTP modules renamed to ``model.layers.{L + k}.`` (the released names)."""
    L = model.config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        match = re.match(r"mtp\.(\d+)\.(.*)", name)
        if match:
            name = f"model.layers.{L + int(match.group(1))}.{match.group(2)}"
        out[name] = tensor
    if write_shared_copies:
        for k in range(len(model.mtp)):
            for copy_name, main_name in SHARED_COPIES.items():
                out[f"model.layers.{L + k}.{copy_name}"] = out[main_name]
    return out


def _unfuse_experts(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers 5's fused expert tensors -> one ``experts.{j}.{gate,up,down}_proj.weight`` per expert."""
    d, f = config.hidden_size, config.moe_intermediate_size  # f: one expert's hidden size
    out = {}
    for name, t in state.items():
        if name.endswith(".mlp.experts.gate_up_proj") and t.dim() == 3:
            prefix = name[: -len("gate_up_proj")]
            if t.shape[1:] == (d, 2 * f) and (d, 2 * f) != (2 * f, d):  # stored (E, d, 2f): transpose
                t = t.transpose(1, 2)
            gate, up = t.chunk(2, dim=1)  # (E, f, d) each: transformers computes gate, up = x W^T .chunk(2)
            for j in range(t.shape[0]):
                out[f"{prefix}{j}.gate_proj.weight"] = gate[j]
                out[f"{prefix}{j}.up_proj.weight"] = up[j]
        elif name.endswith(".mlp.experts.down_proj") and t.dim() == 3:
            prefix = name[: -len("down_proj")]
            if t.shape[1:] == (f, d) and (f, d) != (d, f):  # stored (E, f, d): transpose
                t = t.transpose(1, 2)
            for j in range(t.shape[0]):
                out[f"{prefix}{j}.down_proj.weight"] = t[j]
        else:
            out[name] = t
    return out


def from_checkpoint_state(
    state: dict[str, torch.Tensor], config: ModelConfig, mtp_layers_in_file: int = 0
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint names -> ``DeepSeekV3.state_dict()`` names.

    Returns the renamed tensors and the names of shared-tensor copies whose values differ from the
    main ones. Layers at or beyond ``num_hidden_layers + num_nextn_predict_layers`` that the file's own
    config calls MTP layers (``mtp_layers_in_file``) are dropped: the caller asked for fewer MTP modules.
    """
    L, D = config.num_hidden_layers, config.num_nextn_predict_layers
    state = _unfuse_experts(state, config)
    out: dict[str, torch.Tensor] = {}
    copies: dict[str, str] = {}
    for name, tensor in state.items():
        layer, rest = None, ""
        if match := re.match(r"model\.layers\.(\d+)\.(.*)", name):
            layer, rest = int(match.group(1)), match.group(2)
        elif match := re.match(r"mtp\.(\d+)\.(.*)", name):  # this package's own names (dsv3_edu.train writes them)
            layer, rest = L + int(match.group(1)), match.group(2)
        if layer is not None and layer >= L:
            k = layer - L
            if D <= k < mtp_layers_in_file:
                continue  # an MTP module the caller turned off (num_nextn_predict_layers override)
            if k < D and rest in SHARED_COPIES:
                copies[name] = SHARED_COPIES[rest]
                continue
            if k < D:
                name = f"mtp.{k}.{rest}"
        if name in out:
            raise ValueError(f"the checkpoint holds {name} twice (as model.layers.{L}+k.* and as mtp.k.*)")
        out[name] = tensor
    differing = [
        name for name, main in copies.items()
        if main in out and (state[name].shape != out[main].shape or not torch.equal(state[name], out[main]))
    ]
    return out, differing


# ---------------------------------------------------------------------------------- saving
def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "10MB", "2GiB", "500kB" (decimal units, binary with 'i')."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(size))
        if not match:
            raise ValueError(f"max_shard_size={size!r}: use a number of bytes or a string like '10MB' or '1GiB'")
        power = " KMGT".index(match.group(2).upper() or " ")
        value = int(float(match.group(1)) * (1024 if match.group(3) else 1000) ** power)
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r}: must be positive")
    return value


def _shards(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Split tensors, in order, into groups of at most max_bytes (a bigger tensor gets a shard of its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_bytes is not None and shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_pretrained(
    model: DeepSeekV3,
    save_directory: str | Path,
    max_shard_size: int | str | None = None,
    write_shared_copies: bool = False,
    rope_layout: str = "released",
) -> Path:
    """Write ``config.json`` and the weights in the released layout; return the directory.

    ``max_shard_size`` (bytes or "10MB"): split the weights into ``model-0000i-of-0000n.safetensors`` with a
    ``model.safetensors.index.json``; one ``model.safetensors`` otherwise (or when everything fits one shard).
    ``write_shared_copies``: also store the MTP module's copies of the embedding and head, as the release does.

    Atomic per file: every file is first written completely under a temporary name, then all are moved into
    place with ``os.replace`` (weights first, config.json last), then files of an older checkpoint that the new
    one does not use are removed. A save interrupted while writing leaves the previous checkpoint untouched.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: t.detach().to("cpu").contiguous().clone()  # clone: the shared copies must not alias
        for name, t in to_checkpoint_state(model, write_shared_copies).items()
    }
    shards = _shards(state, None if max_shard_size is None else _parse_size(max_shard_size))
    files: dict[str, dict[str, torch.Tensor]]
    if len(shards) == 1:
        files, index = {SAFE_WEIGHTS_NAME: shards[0]}, None
    else:
        n = len(shards)
        files = {f"model-{i:05d}-of-{n:05d}.safetensors": shard for i, shard in enumerate(shards, 1)}
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {name: file for file, shard in files.items() for name in shard},
        }
    config_text = json.dumps(model.config.to_hf(rope_layout), indent=2) + "\n"

    written: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for file, shard in files.items():
            final = directory / file
            written.append((write_temp(final, lambda p, s=shard: save_file(s, p, {"format": "pt"})), final))
        if index is not None:
            final = directory / SAFE_INDEX_NAME
            written.append((write_temp(final, lambda p: p.write_text(json.dumps(index, indent=2))), final))
        final = directory / CONFIG_NAME
        written.append((write_temp(final, lambda p: p.write_text(config_text)), final))
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        for leftover in directory.glob(f".*.tmp-{os.getpid()}"):
            leftover.unlink(missing_ok=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    for tmp, final in written:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it (safetensors writes 0600)
        os.replace(tmp, final)
    # Remove what an older checkpoint left: its index first (so a loader never sees a stale index).
    if index is None:
        (directory / SAFE_INDEX_NAME).unlink(missing_ok=True)
    for old in directory.iterdir():
        if old.name not in files and (SHARD_PATTERN.match(old.name) or old.name == SAFE_WEIGHTS_NAME):
            old.unlink()
    return directory


# --------------------------------------------------------------------------------- loading
def _torch_load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError names the global it refused
        raise ValueError(
            f"Refusing to load {path}: it is a pickle that does not load with torch.load(weights_only=True), "
            f"so reading it could run arbitrary code ({type(err).__name__}: {_first_line(err)}). "
            "Convert it to safetensors from a source you trust."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors (a state_dict)")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with an error that names the file and what to do."""
    try:
        return load_file(path)
    except Exception as err:  # SafetensorError (truncated, empty, not safetensors), OSError
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise ValueError(
            f"Cannot read {path} ({size:,} bytes): it is not a complete safetensors file "
            f"({type(err).__name__}: {_first_line(err)}). It was cut short or damaged; copy it again from its "
            "source, or save the model again."
        ) from None


def _read_weight_map(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index_path} is not valid JSON ({err}): the index is damaged; copy it again") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(
            f"{index_path} has no \"weight_map\" (a dict of tensor name -> shard file), so the shards cannot be "
            "found. Copy the index again, or remove it if the folder holds one model.safetensors."
        )
    return weight_map


def read_checkpoint_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder with their names on disk: sharded or single safetensors
    (preferred), else a pickle that loads with ``torch.load(weights_only=True)``."""
    directory = Path(directory)
    index_path = directory / SAFE_INDEX_NAME
    if index_path.exists():
        weight_map = _read_weight_map(index_path)
        state: dict[str, torch.Tensor] = {}
        for file in sorted(set(weight_map.values())):
            if not (directory / file).exists():
                raise FileNotFoundError(f"{index_path} lists {file}, which is missing from {directory}")
            state.update(read_safetensors(directory / file))
        listed_but_absent = sorted(set(weight_map) - set(state))
        if listed_but_absent:
            raise ValueError(f"{index_path} lists tensors its shards do not hold: {listed_but_absent[:10]}")
        return state
    if (directory / SAFE_WEIGHTS_NAME).exists():
        return read_safetensors(directory / SAFE_WEIGHTS_NAME)
    pickle_index = directory / "pytorch_model.bin.index.json"
    if pickle_index.exists():
        state = {}
        for file in sorted(set(_read_weight_map(pickle_index).values())):
            state.update(_torch_load_weights_only(directory / file))
        return state
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if len(pickles) == 1:
        return _torch_load_weights_only(pickles[0])
    if pickles:
        raise ValueError(f"{directory} holds several pickle files {[p.name for p in pickles]} and no index")
    raise FileNotFoundError(
        f"No weights in {directory}: expected {SAFE_WEIGHTS_NAME}, or {SAFE_INDEX_NAME} with its shards"
    )


def _likely_causes(on_disk: dict[str, torch.Tensor], config: ModelConfig) -> list[str]:
    """What probably made a checkpoint not fit: counts and sizes read off the tensors, against the config."""
    causes = []
    layers: dict[int, set[str]] = {}
    for name in on_disk:
        if match := re.match(r"model\.layers\.(\d+)\.(.*)", name):
            layers.setdefault(int(match.group(1)), set()).add(match.group(2))
    n_mtp = sum(1 for rest in layers.values() if "eh_proj.weight" in rest)
    n_main = len(layers) - n_mtp
    if layers and n_main != config.num_hidden_layers:
        causes.append(f"the checkpoint has {n_main} decoder layers (+{n_mtp} MTP), the config asks for "
                      f"num_hidden_layers={config.num_hidden_layers}")
    emb = on_disk.get("model.embed_tokens.weight")
    if emb is not None and emb.dim() == 2:
        if emb.shape[1] != config.hidden_size:
            causes.append(f"the checkpoint has hidden_size {emb.shape[1]} (model.embed_tokens.weight is "
                          f"{tuple(emb.shape)}), the config asks for {config.hidden_size}")
        if emb.shape[0] != config.vocab_size:
            causes.append(f"the checkpoint has a vocabulary of {emb.shape[0]}, the config asks for "
                          f"vocab_size={config.vocab_size}")
    experts = {int(m.group(1)) for name in on_disk if (m := re.search(r"\.mlp\.experts\.(\d+)\.", name))}
    fused = [t.shape[0] for name, t in on_disk.items() if name.endswith(".mlp.experts.down_proj") and t.dim() == 3]
    n_experts = (max(experts) + 1) if experts else (fused[0] if fused else None)
    if n_experts is not None and n_experts != config.n_routed_experts:
        causes.append(f"the checkpoint has {n_experts} routed experts per layer, the config asks for "
                      f"n_routed_experts={config.n_routed_experts}")
    return causes


def _mismatch_error(directory: Path, config: ModelConfig, missing, unexpected, mismatched, wrong_dtype=(),
                    causes=(), shown: int = 3) -> CheckpointMismatchError:
    """At most ~20 lines: per kind the count and the first ``shown`` names, then the likeliest causes."""
    def fmt(shape) -> str:
        return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"

    lines = [
        f"The checkpoint in {directory} does not fit the model its config describes "
        f"(hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
        f"num_nextn_predict_layers={config.num_nextn_predict_layers}, n_routed_experts={config.n_routed_experts}):"
    ]
    kinds = [
        ("missing", [f"{name}  expected {fmt(shape)}" for name, shape in missing]),
        ("unexpected", [f"{name}  got {fmt(shape)}" for name, shape in unexpected]),
        ("mis-shaped", [f"{name}  expected {fmt(want)}, got {fmt(got)}" for name, want, got in mismatched]),
        ("wrong dtype", [f"{name}  expected {want}, got {got}" for name, want, got in wrong_dtype]),
    ]
    for kind, rows in kinds:
        if rows:
            more = f", first {shown}" if len(rows) > shown else ""
            lines.append(f"  {kind} ({len(rows)}{more}):")
            lines += [f"    {row}" for row in rows[:shown]]
    if any(name.endswith("_scale_inv") for name, _ in unexpected):
        lines.append("  (weight_scale_inv tensors: FP8 release weights; dequantize them to bf16/fp32 first)")
    if causes:
        lines.append("Likely cause: " + "; ".join(causes) + ".")
    return CheckpointMismatchError("\n".join(lines), list(missing), list(unexpected), list(mismatched),
                                   list(wrong_dtype))


def _dtype_problem(want: torch.dtype, got: torch.dtype) -> bool:
    """A tensor that cannot stand for a parameter of dtype ``want`` (copying it would change its meaning):
    integers or bools for floats, floats for integers, and 8-bit floats (FP8 needs its scales)."""
    if want.is_floating_point:
        return not got.is_floating_point or got.itemsize < 2
    return got.is_floating_point


def check_fits(directory: Path, model: DeepSeekV3, state: dict[str, torch.Tensor],
               on_disk: dict[str, torch.Tensor], skip_mtp: bool = False) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` (``model.state_dict()`` names) has exactly the
    model's tensors, with their shapes and a compatible dtype. ``skip_mtp``: the MTP modules may be absent."""
    config = model.config
    L = config.num_hidden_layers
    own = model.state_dict()
    expected = {name: (tuple(t.shape), t.dtype) for name, t in own.items()
                if not (skip_mtp and name.startswith("mtp."))}

    def on_disk_name(name: str) -> str:
        match = re.match(r"mtp\.(\d+)\.(.*)", name)
        return f"model.layers.{L + int(match.group(1))}.{match.group(2)}" if match else name

    missing = [(on_disk_name(n), shape) for n, (shape, _) in expected.items() if n not in state]
    unexpected = [(on_disk_name(n), tuple(t.shape)) for n, t in state.items() if n not in expected]
    mismatched = [(on_disk_name(n), expected[n][0], tuple(t.shape)) for n, t in state.items()
                  if n in expected and tuple(t.shape) != expected[n][0]]
    wrong_dtype = [(on_disk_name(n), str(expected[n][1]).removeprefix("torch."), str(t.dtype).removeprefix("torch."))
                   for n, t in state.items() if n in expected and _dtype_problem(expected[n][1], t.dtype)]
    if missing or unexpected or mismatched or wrong_dtype:
        causes = _likely_causes(on_disk, config)
        fp8 = any(name.endswith("_scale_inv") for name, _ in unexpected)
        if wrong_dtype and not causes and not fp8:
            causes.append("tensors of a non-float dtype (or FP8 without its scales) where the model has float "
                          "weights: the file was written by something else, or damaged")
        raise _mismatch_error(directory, config, missing, unexpected, mismatched, wrong_dtype, causes)


def load_pretrained(
    directory: str | Path,
    allow_random_mtp: bool = False,
    dtype: torch.dtype | str | None = None,
    **config_overrides: Any,
) -> DeepSeekV3:
    """Build a :class:`DeepSeekV3` from a checkpoint folder (ours, the released layout, or transformers').

    ``config_overrides`` change the config read from config.json, e.g. ``attn_impl="absorbed"`` or
    ``num_nextn_predict_layers=0`` (drop the MTP modules: needed for transformers' checkpoints, which have
    none); keys that fix the weights' shapes cannot be changed. ``allow_random_mtp=True`` instead keeps MTP
    modules the checkpoint lacks, randomly initialized, with a warning. ``dtype``: cast the weights (a
    torch dtype or a name such as "bf16", "float16"). Returns the model in eval mode.
    """
    directory = Path(directory)
    if dtype is not None:
        dtype = resolve_dtype(dtype)
    config_path = directory / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}: is it a checkpoint folder?")
    raw_config = read_config_json(config_path)
    for key, value in config_overrides.items():
        if key in SHAPE_KEYS and key in raw_config and raw_config[key] != value:
            raise ValueError(
                f"{key}={value!r}: the checkpoint in {directory} has {key}={raw_config[key]!r}, and its weights have "
                f"the shapes that implies. Load it without this override (overrides may change what keeps the "
                "shapes: attn_impl, or num_nextn_predict_layers=0 to drop the MTP modules)."
            )
    config = ModelConfig.from_hf(raw_config, **config_overrides)
    model = DeepSeekV3(config)
    L, D = config.num_hidden_layers, config.num_nextn_predict_layers

    on_disk = read_checkpoint_tensors(directory)
    state, differing = from_checkpoint_state(on_disk, config, raw_config.get("num_nextn_predict_layers", 0))
    if differing:
        raise ValueError(
            f"The checkpoint in {directory} stores MTP copies of the shared embedding/head that differ from the "
            f"main ones: {differing}. DeepSeek-V3 shares them ([V3] 2.2) and so does dsv3_edu; load with "
            "num_nextn_predict_layers=0 to ignore the MTP module."
        )

    has_mtp = any(name.startswith("mtp.") for name in state)
    if D and not has_mtp:
        if not allow_random_mtp:
            raise ValueError(
                f"The checkpoint in {directory} has no weights for the {D} MTP module(s) its config asks for "
                f"(model.layers.{L}.* and beyond); transformers' DeepseekV3ForCausalLM does not save them. "
                "Pass num_nextn_predict_layers=0 to load the main model only, or allow_random_mtp=True to keep "
                "randomly initialized MTP modules."
            )
        warnings.warn(
            f"{directory}: no MTP weights; the {D} MTP module(s) keep their random initialization "
            "(their drafts are noise until trained)",
            stacklevel=2,
        )
    check_fits(directory, model, state, on_disk, skip_mtp=D > 0 and not has_mtp)
    model.load_state_dict(state, strict=False)  # strict checks done above, with one clear message
    if dtype is not None:
        model.to(dtype)
    return model.eval()
