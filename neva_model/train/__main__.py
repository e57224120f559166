"""`python -m neva_model.train`: train the shapes NeVA from a seed and write it as a llava-hf checkpoint.

The run is deterministic for a seed and thread count on one machine: every random draw comes from the seed.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from ..model import Neva
from . import DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
from .bundled_examples import write_examples
from .clip_pretrain import pretrain_vision_tower
from .evaluate import accuracy_by_type
from .export import save_checkpoint
from .initialize import initialize
from .neva_stages import neva_finetune, neva_pretrain, pool_features, pretrain_language_model
from .pool import ScenePool
from .recipe import MAX_POSITIONS, Recipe, model_config
from .vocabulary import BOS, PAD, save_tokenizer, task_corpus, train_tokenizer

log = logging.getLogger("neva_model.train")

EVAL_SEED_OFFSET = 1_000_000  # held-out scenes come from seed + this, which no training stream uses


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neva_model.train", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint directory to write")
    parser.add_argument("--examples", type=Path, default=DEFAULT_EXAMPLES,
                        help="where the bundled example pictures and their questions go")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of every stage's steps and scene pools (quick checks; 1 ships)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (results are reproducible for a fixed count)")
    return parser


def train(recipe: Recipe, out: Path) -> tuple[Neva, dict]:
    """Every stage in order; returns the model and the report (losses, held-out accuracy per question type)."""
    seed = recipe.seed
    torch.manual_seed(seed)
    tokenizer = save_tokenizer(train_tokenizer(task_corpus(seed)), out, MAX_POSITIONS)
    model = initialize(Neva(model_config(tokenizer.vocab_size)))
    pool = ScenePool.generate(recipe.train_scenes, seed * 100 + 1)
    losses = {"clip": pretrain_vision_tower(model.vision_tower, tokenizer, recipe.clip, seed * 100 + 2)}
    losses["lm"] = pretrain_language_model(model, tokenizer, pool, recipe.lm, seed * 100 + 3)
    features = pool_features(model, pool)
    losses["stage1"] = neva_pretrain(model, tokenizer, pool, features, recipe.stage1, seed * 100 + 4)
    losses["stage2"] = neva_finetune(model, tokenizer, pool, features, recipe.stage2, seed * 100 + 5)
    eval_pool = ScenePool.generate(recipe.eval_scenes, seed + EVAL_SEED_OFFSET)
    accuracy = accuracy_by_type(model, tokenizer, eval_pool)
    report = {"eval_scenes": recipe.eval_scenes, "eval_seed": seed + EVAL_SEED_OFFSET, "accuracy": accuracy,
              "loss": {name: {"first": values[0], "last": values[-1]} for name, values in losses.items()}}
    return model, report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed).scaled(args.scale) if args.scale != 1 else Recipe(seed=args.seed)
    start = time.perf_counter()
    model, report = train(recipe, args.out)
    save_checkpoint(model, args.out, BOS, PAD)
    write_examples(args.examples, args.seed)
    command = " ".join(["python -m neva_model.train", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    report = {"command": command, "seed": args.seed, "threads": args.threads, "scale": args.scale, **report}
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    for kind, result in report["accuracy"].items():
        log.info("held-out accuracy %-15s %4d/%4d = %.4f", kind, result["correct"], result["total"],
                 result["accuracy"])
    log.info("wrote %s in %.0f s", args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
