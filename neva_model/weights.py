"""Load a llava-hf checkpoint directory (config.json + safetensors shards) into a Neva, without pickle.

The model is built on the meta device, then materialized empty on the target device and filled tensor by
tensor, shard by shard: host memory holds about one tensor (safetensors maps the file) rather than the model.
Every checkpoint tensor must land in exactly one model tensor of its shape, and every model tensor must be
filled; anything else is a NevaWeightsError naming the tensor. All of that is checked from the shard headers
before any memory is allocated, so a config.json that disagrees with the weights (a huge vocab_size, say) is a
clear error rather than an allocation failure. Under tensor parallelism (neva_model.parallel) a rank's model is its
share of the decoder, and only that share of each split tensor is read (safetensors' get_slice).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError, safe_open

from neva_kernels import NevaValueError
from neva_kernels.errors import first_line

from .config import NevaConfigError, from_hf_config, read_json_object
from .fused_linear import FusedLinear
from .model import Neva
from .parallel import Layout, ShardMap, TensorParallel, shard_neva


class NevaWeightsError(NevaValueError):
    """A checkpoint tensor is missing, unexpected or of the wrong shape, or the checkpoint is unreadable."""


# Checkpoint name prefixes -> this model's: transformers 4 layout, transformers 5 layout, vision_model nesting.
_PREFIXES = [
    (r"^(model\.)?language_model\.model\.|^model\.language_model\.", "language_model."),
    (r"^(model\.)?language_model\.lm_head\.|^lm_head\.", "lm_head."),
    (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_tower."),
    (r"^(model\.)?multi_modal_projector\.", "multi_modal_projector."),
]
# Buffers some older checkpoints carry that this model computes itself.
_IGNORED = re.compile(r"(position_ids|rotary_emb\.inv_freq)$")
# Separate projections that this model stores fused: part name -> fused module name.
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
          "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_name(checkpoint_name: str) -> str | None:
    """This model's name for a checkpoint tensor, before fusing (None: not a name this model knows)."""
    for pattern, replacement in _PREFIXES:
        renamed, count = re.subn(pattern, replacement, checkpoint_name, count=1)
        if count:
            return renamed
    return None


def shard_files(model_dir: Path) -> list[Path]:
    """The safetensors files of the checkpoint: those model.safetensors.index.json names, else every one there."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, NevaWeightsError).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise NevaWeightsError(f"{index}: 'weight_map' must be an object of tensor name -> shard file name")
        return [_shard_path(model_dir, index, name) for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise NevaWeightsError(f"no *.safetensors files in {model_dir}")
    return files


def _shard_path(model_dir: Path, index: Path, name: str) -> Path:
    """A shard named in the index: a plain file name inside model_dir, never a path that leads out of it."""
    parts = PurePosixPath(name).parts
    if (not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or ".." in parts
            or "\\" in name):
        raise NevaWeightsError(f"{index}: shard file {name!r} must be a relative path inside {model_dir}")
    path = model_dir / name
    if not path.is_file():
        raise NevaWeightsError(f"{index}: shard file {name!r} does not exist in {model_dir}")
    return path


@contextmanager
def _open_shard(path: Path):
    """safe_open with unreadable or malformed files (truncated, not safetensors) as a NevaWeightsError."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as shard:
            yield shard
    except (SafetensorError, OSError) as error:
        raise NevaWeightsError(f"cannot read {path}: {error}") from error


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def checkpoint_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Checkpoint tensor name -> shape, read from the shard headers only (no tensor data is read)."""
    shapes = {}
    for path in shard_files(model_dir):
        with _open_shard(path) as shard:
            for name in shard.keys():
                header = shard.get_slice(name)
                if header.get_dtype() not in _FLOAT_DTYPES and not _IGNORED.search(name):
                    raise NevaWeightsError(f"{path}: tensor '{name}' has dtype {header.get_dtype()}, expected "
                                           f"one of {', '.join(sorted(_FLOAT_DTYPES))}")
                if name in shapes:
                    raise NevaWeightsError(f"tensor '{name}' appears twice in the checkpoint (again in {path})")
                shapes[name] = header.get_shape()
    return shapes


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype config.json says the weights were saved in (float32 when it does not say)."""
    config = read_json_object(model_dir / "config.json")
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(name, torch.float32)


class _Filler:
    """Copies checkpoint tensors into the model's (possibly fused) parameters and remembers what was filled."""

    def __init__(self, model: Neva, shards: ShardMap):
        self.model, self.shards = model, shards
        self.tensors = dict(model.named_parameters(remove_duplicate=False))
        self.expected = {name: [None] for name in self.tensors}  # name -> parts still to fill
        for module_name, module in model.named_modules():
            if isinstance(module, FusedLinear):
                for kind in ("weight", "bias") if module.bias is not None else ("weight",):
                    self.expected[f"{module_name}.{kind}"] = list(module.part_sizes)
        # Tied: lm_head.weight is embed_tokens.weight, so the file may hold it or not.
        self.optional = {"lm_head.weight"} if model.config.tie_word_embeddings else set()

    def target(self, checkpoint_name: str) -> tuple[str, str | None]:
        """(model tensor name, fused part or None) for a checkpoint tensor."""
        name = model_name(checkpoint_name)
        if name is None:
            raise NevaWeightsError(f"unexpected tensor '{checkpoint_name}' in the checkpoint")
        module_path, part, kind = name.rsplit(".", 2) if name.count(".") >= 2 else ("", *name.split("."))
        fused = f"{module_path}.{_FUSED.get(part)}.{kind}"
        if part in _FUSED and fused in self.tensors:  # (Nemotron's up_proj is a plain Linear of its own)
            return fused, part
        return name, None

    def fill(self, checkpoint_name: str, shape: list[int], read: Callable[[tuple | None], torch.Tensor] | None = None
             ) -> None:
        """Copy the checkpoint tensor of `shape` into its model tensor: read(index) reads the slice this process
        holds (index None: all of it). Without `read` (or on a meta-device model) it only checks that it fits."""
        name, part = self.target(checkpoint_name)
        if name not in self.tensors:
            raise NevaWeightsError(f"unexpected tensor '{checkpoint_name}' in the checkpoint (no model tensor "
                                   f"'{name}')")
        destination = self.tensors[name]
        if part is not None:
            destination = destination[self.model.get_submodule(name.rsplit(".", 1)[0]).part_rows(part)]
        shard = self.shards.get((name, part))
        expected = list(destination.shape) if shard is None else shard.full_shape(destination.shape)
        if list(shape) != expected:
            raise NevaWeightsError(f"tensor '{checkpoint_name}' has shape {list(shape)}, the model expects "
                                   f"{expected} (check config.json)")
        remaining = self.expected.get(name, [])
        if part not in remaining:
            raise NevaWeightsError(f"tensor '{checkpoint_name}' appears twice in the checkpoint")
        remaining.remove(part)
        if read is not None and not destination.is_meta:
            with torch.no_grad():
                if shard is None:
                    destination.copy_(read(None))
                else:
                    shard.copy_into(destination, read(shard.index()))

    def check_complete(self) -> None:
        missing = [name if parts == [None] else f"{name} ({', '.join(parts)})"
                   for name, parts in self.expected.items() if parts and name not in self.optional]
        if missing:
            raise NevaWeightsError(f"the checkpoint lacks {len(missing)} tensor(s): {', '.join(missing[:8])}"
                                   + (" ..." if len(missing) > 8 else ""))


def load_neva(model_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
              tensor_parallel: TensorParallel | None = None) -> Neva:
    """A Neva with the weights of the llava-hf checkpoint in model_dir, in `dtype` (default: the checkpoint's)
    on `device`, in eval mode. With `tensor_parallel`, this rank's share of the decoder (neva_model.parallel):
    only its slice of each split tensor is read from the files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NevaConfigError(f"the model directory {model_dir} "
                              f"{'is a file, not a directory' if model_dir.exists() else 'does not exist'}")
    config = from_hf_config(model_dir)
    if tensor_parallel is not None:  # a model the ranks cannot split is refused before any file is read further
        Layout.of(config.text, tensor_parallel.rank, tensor_parallel.world_size)
    dtype = dtype or checkpoint_dtype(model_dir)
    shapes = checkpoint_shapes(model_dir)
    # Tied embeddings, yet the file holds an lm_head too: load it untied and tie again only if the two agree.
    tied_with_head = config.tie_word_embeddings and any(model_name(n) == "lm_head.weight" for n in shapes)
    with torch.device("meta"):
        model = Neva(replace(config, tie_word_embeddings=False) if tied_with_head else config).to(dtype)
    shards = shard_neva(model, tensor_parallel) if tensor_parallel is not None else {}
    dry_run = _Filler(model, shards)  # every name and shape checked before the device holds a byte
    for name, shape in shapes.items():
        if not _IGNORED.search(name):
            dry_run.fill(name, shape)
    dry_run.check_complete()
    model = _materialize(model, device, dtype)
    filler = _Filler(model, shards)
    for path in shard_files(model_dir):
        with _open_shard(path) as shard:
            for name in shard.keys():
                if not _IGNORED.search(name):
                    view = shard.get_slice(name)  # reads nothing until indexed
                    filler.fill(name, view.get_shape(), lambda index, shard=shard, name=name, view=view:
                                shard.get_tensor(name) if index is None else view[index])
    if tied_with_head:
        _tie_if_equal(model, config)
    return model.eval()


def _materialize(model: Neva, device, dtype: torch.dtype) -> Neva:
    """The meta model allocated (uninitialized) on `device`; too large a model is a NevaWeightsError."""
    try:
        model = model.to_empty(device=device)
    except (RuntimeError, MemoryError) as error:  # torch's allocators raise RuntimeError subtypes
        count = sum(p.numel() for p in model.parameters())
        raise NevaWeightsError(f"cannot allocate the model's {count:,} parameters in {dtype} "
                               f"({count * dtype.itemsize / 2**30:.3g} GiB) on {device}: "
                               f"{first_line(error)}") from error
    model.tie_weights()  # to_empty gives every module its own tensor
    return model


def _tie_if_equal(model: Neva, tied_config) -> None:
    """config.json ties lm_head to embed_tokens and the file holds both: tie them when equal; else keep them apart
    (as transformers does) rather than silently drop one, and say so."""
    if torch.equal(model.lm_head.weight, model.language_model.embed_tokens.weight):
        model.config = tied_config
        model.tie_weights()
    else:
        warnings.warn("config.json sets tie_word_embeddings, but the checkpoint's lm_head.weight differs from "
                      "embed_tokens.weight: both are kept, untied (model.config.tie_word_embeddings is False)",
                      stacklevel=3)
