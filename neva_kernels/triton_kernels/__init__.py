"""The triton backend: @triton.jit kernels, one module per op, each registering itself with the dispatcher.

On CUDA tensors they run compiled; on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1 set
before neva_kernels is imported), in float16/float32.
"""
from .. import backends

try:
    import triton  # noqa: F401
except ImportError as error:
    backends.set_backend_missing("triton", f"triton is not installed ({error})")
else:
    backends.set_backend_missing("triton", None)
    from . import append_kv_cache, layer_norm, paged_decode_attention, rms_norm, rotary_embedding  # noqa: F401
    from . import flash_attention, flash_attention_backward, project_image_tokens  # noqa: F401  (register)
