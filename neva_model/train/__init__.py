"""Train neva's own small NeVA on a generated shapes VQA task, by NeVA's two-stage recipe.

`python -m neva_model.train --seed 0` reproduces the shipped checkpoint (DEFAULT_CHECKPOINT): a word-level
tokenizer (vocabulary.py), a CLIP vision tower pretrained contrastively (clip_pretrain.py), a LLaMA decoder
pretrained on the task's text, then NeVA stage 1 (projector) and stage 2 (projector + LM) (neva_stages.py),
evaluated on held-out scenes through the generation engine (evaluate.py), written in llava-hf format (export.py).
"""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = _PACKAGE / "checkpoints" / "neva-shapes"
DEFAULT_EXAMPLES = _PACKAGE / "examples"
