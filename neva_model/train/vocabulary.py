"""A word-level tokenizer trained with the `tokenizers` library on the task's text (prompts, answers, captions).

Text is lowercased and split on whitespace and punctuation; words the task never uses become "<unk>". The
decoder glues punctuation back to the word before it, so answers read "a red circle, a blue square".
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from ..prompts import build_prompt
from ..tokenizer import NevaTokenizer, load_tokenizer
from .scenes import questions, random_scene

# Fixed ids: these come first in the vocabulary, in this order.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
UNK, BOS, EOS, PAD, IMAGE = range(len(SPECIAL_TOKENS))


def task_corpus(seed: int, num_scenes: int = 2000) -> list[str]:
    """Every kind of text the model reads or writes: full llava-1.5 prompts and their answers."""
    rng = random.Random(seed)
    texts = []
    for _ in range(num_scenes):
        for qa in questions(random_scene(rng), rng):
            texts += [build_prompt(qa.question), qa.answer]
    return texts


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(cleanup=True)  # only its clean-up applies: " ," -> ","
    # The trainer does not match special tokens in its input: drop the placeholder so that "<" and ">" stay out.
    words = (text.replace("<image>", " ") for text in texts)
    tokenizer.train_from_iterator(words, WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    wrong = [t for i, t in enumerate(SPECIAL_TOKENS) if tokenizer.token_to_id(t) != i]
    if wrong:  # the model's config (image_token_index, eos) relies on these ids
        raise RuntimeError(f"the tokenizer trainer did not give {wrong} the ids {SPECIAL_TOKENS}")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> NevaTokenizer:
    """Write tokenizer.json and tokenizer_config.json (read by neva_model.tokenizer and by transformers)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
              "model_max_length": model_max_length, "extra_special_tokens": {"image_token": "<image>"}}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return load_tokenizer(directory)
