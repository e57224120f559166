"""The optimization loop every stage shares: AdamW, warm-up then cosine decay, clipping, tqdm and loss logging."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .recipe import Stage

log = logging.getLogger("neva_model.train")


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def optimize(name: str, parameters: list[nn.Parameter], stage: Stage, loss_of_step: Callable[[int], Tensor],
             log_every: int = 50) -> list[float]:
    """Run `stage.steps` steps minimizing loss_of_step(step); returns the loss of every step."""
    optimizer = torch.optim.AdamW(parameters, lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, stage.steps))
    losses = []
    with tqdm(range(stage.steps), desc=name, unit="step", dynamic_ncols=True) as bar:
        for step in bar:
            loss = loss_of_step(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if (step + 1) % log_every == 0 or step + 1 == stage.steps:
                recent = losses[-log_every:]
                log.info("%s step %d/%d: loss %.4f (mean of the last %d steps)", name, step + 1, stage.steps,
                         sum(recent) / len(recent), len(recent))
    return losses
