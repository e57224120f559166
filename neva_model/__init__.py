"""neva_model: the NeVA (LLaVA-1.5-style) model stack on neva_kernels.

    from neva_model import Neva
    model = Neva()                       # the small "tiny" preset, random weights
    logits = model(images, caption_tokens)  # [B, 3, H, W], [B, T] -> [B, T_img + T, vocab]

Real checkpoints: ``load_neva(llava_hf_dir)``; answers: ``Engine(model).generate([Request(...)])``; or the
``neva ask`` command.
"""
from .config import NevaConfig, NevaConfigError, TextConfig, VisionConfig, from_hf_config
from .generate import Completion, Engine, QueueFullError, Request, StepOutput, Timings
from .model import Neva
from .sampling import SamplingParams
from .weights import NevaWeightsError, load_neva

__all__ = ["Completion", "Engine", "Neva", "NevaConfig", "NevaConfigError", "NevaWeightsError", "QueueFullError",
           "Request", "SamplingParams", "StepOutput", "TextConfig", "Timings", "VisionConfig", "from_hf_config",
           "load_neva"]
