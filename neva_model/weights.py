"""Load a llava-hf checkpoint directory (config.json + safetensors shards) into a Neva, without pickle.

The model is built on the meta device, then materialized empty on the target device and filled tensor by
tensor, shard by shard: host memory holds about one tensor (safetensors maps the file) rather than the model.
Every checkpoint tensor must land in exactly one model tensor of its shape, and every model tensor must be
filled; anything else is a NevaWeightsError naming the tensor.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from neva_kernels import NevaValueError

from .config import from_hf_config
from .fused_linear import FusedLinear
from .model import Neva


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
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise NevaWeightsError(f"no *.safetensors files in {model_dir}")
    return files


def checkpoint_dtype(model_dir: Path) -> torch.dtype:
    """The dtype config.json says the weights were saved in (float32 when it does not say)."""
    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(name, torch.float32)


class _Filler:
    """Copies checkpoint tensors into the model's (possibly fused) parameters and remembers what was filled."""

    def __init__(self, model: Neva):
        self.model = model
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

    def fill(self, checkpoint_name: str, tensor: torch.Tensor) -> None:
        name, part = self.target(checkpoint_name)
        if name not in self.tensors:
            raise NevaWeightsError(f"unexpected tensor '{checkpoint_name}' in the checkpoint (no model tensor "
                                   f"'{name}')")
        destination = self.tensors[name]
        if part is not None:
            destination = destination[self.model.get_submodule(name.rsplit(".", 1)[0]).part_rows(part)]
        if tuple(tensor.shape) != tuple(destination.shape):
            raise NevaWeightsError(f"tensor '{checkpoint_name}' has shape {list(tensor.shape)}, the model expects "
                                   f"{list(destination.shape)} (check config.json)")
        with torch.no_grad():
            destination.copy_(tensor)
        remaining = self.expected.get(name, [])
        if part not in remaining:
            raise NevaWeightsError(f"tensor '{checkpoint_name}' appears twice in the checkpoint")
        remaining.remove(part)

    def check_complete(self) -> None:
        missing = [name if parts == [None] else f"{name} ({', '.join(parts)})"
                   for name, parts in self.expected.items() if parts and name not in self.optional]
        if missing:
            raise NevaWeightsError(f"the checkpoint lacks {len(missing)} tensor(s): {', '.join(missing[:8])}"
                                   + (" ..." if len(missing) > 8 else ""))


def load_neva(model_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Neva:
    """A Neva with the weights of the llava-hf checkpoint in model_dir, in `dtype` (default: the checkpoint's)
    on `device`, in eval mode."""
    model_dir = Path(model_dir)
    config = from_hf_config(model_dir)
    dtype = dtype or checkpoint_dtype(model_dir)
    with torch.device("meta"):
        model = Neva(config).to(dtype)  # cast while empty: the device never holds a float32 copy
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty gives every module its own tensor
    filler = _Filler(model)
    for path in shard_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as shard:
            for name in shard.keys():
                if not _IGNORED.search(name):
                    filler.fill(name, shard.get_tensor(name))
    filler.check_complete()
    return model.eval()
