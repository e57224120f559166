"""neva_kernels: fused kernels for NeVA inference and finetuning, one contract over three backends.

Every op is one function here, registered as a torch.library custom op (``torch.ops.neva.*``) with a fake
implementation, so torch.compile and CUDA graphs see no graph break. Per call it runs on the best backend
available for the device and dtype ("cuda" > "triton" > "torch"); see ``neva_kernels.backends`` for overrides.
"""
from . import cuda_backend, reference, triton_kernels  # noqa: F401  (the backends register themselves)
from .backends import BACKENDS, OPS, set_backend, use_backend
from .checks import set_value_checks, value_checks
from .errors import BackendUnavailableError, NevaError, NevaTypeError, NevaValueError, OutOfBlocksError
from .ops import (append_kv_cache, flash_attention, layer_norm, paged_decode_attention, project_image_tokens,
                  rms_norm, rotary_embedding)
from .paged_cache import BlockAllocator, PagedKVCache

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "OPS", "BackendUnavailableError", "BlockAllocator", "NevaError", "NevaTypeError", "NevaValueError",
    "OutOfBlocksError", "PagedKVCache", "append_kv_cache", "flash_attention", "layer_norm", "paged_decode_attention",
    "project_image_tokens", "rms_norm", "rotary_embedding", "set_backend", "set_value_checks", "use_backend",
    "value_checks",
]
