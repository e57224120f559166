"""The public ops. Each module defines one op: its checks, its torch.library custom op and its fake."""
from .. import backends, reference, torch_backend
from .append_kv_cache import append_kv_cache
from .flash_attention import flash_attention
from .layer_norm import layer_norm
from .paged_decode_attention import paged_decode_attention
from .project_image_tokens import project_image_tokens
from .rms_norm import rms_norm
from .rotary_embedding import rotary_embedding

# The torch backend runs every op on every device and dtype: the reference, or its lean version on the decode path.
for _op in backends.OPS + backends.BACKWARD_OPS:
    backends.register(_op, "torch")(torch_backend.LEAN.get(_op) or getattr(reference, _op))

__all__ = ["append_kv_cache", "flash_attention", "layer_norm", "paged_decode_attention", "project_image_tokens",
           "rms_norm", "rotary_embedding"]
