"""neva_model: the NeVA (LLaVA-1.5-style) model stack on neva_kernels.

    from neva_model import Neva
    model = Neva()                       # the small "tiny" preset, random weights, 256 x 256 images
    logits = model(images, caption_tokens)  # [B, 3, 256, 256], [B, T] -> [B, T_img + T, vocab]

Real checkpoints: ``load_neva(llava_hf_dir)``; answers: ``Engine(model).generate([Request(...)])``; or the
``neva ask`` command.

The names below are imported on first use (PEP 562), so that `neva`'s entry point (neva_model.cli) starts
without torch and can report any failure to import it, or neva_kernels, as one line.
"""
import importlib

_EXPORTS = {
    "NevaConfig": "config", "NevaConfigError": "config", "TextConfig": "config", "VisionConfig": "config",
    "from_hf_config": "config", "Completion": "generate", "Engine": "generate", "Request": "generate",
    "Timings": "generate", "QueueFullError": "generate", "StepOutput": "generate", "Neva": "model",
    "SamplingParams": "sampling", "NevaWeightsError": "weights",
    "load_neva": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neva_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
