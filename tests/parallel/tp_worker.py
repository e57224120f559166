"""One rank of the tensor-parallel tests, started by torchrun: `torchrun --nproc-per-node N -m tests.parallel.tp_worker
MODE OUT ...`. Every rank saves what it computed to OUT/rank<R>.pt; the tests compare the ranks with each other and
with the single-process model.

parity OUT CHECKPOINT...: per checkpoint, the logits of OUT/inputs.pt's batch, the Engine's answers to its requests
    (each rank's torch generator seeded differently, so that unseeded sampling differs unless rank 0's token is
    used everywhere) and the K/V heads of the rank's cache.
shipped OUT: the shipped model's answers to every bundled question (neva_model/examples), as one batch.
neva MODEL0,MODEL1,... ARGS...: `neva ARGS --model MODEL<R>` (the error tests give one rank a broken checkpoint;
    with FAIL_DECODE_ON_RANK=R, rank R's decode step raises).

The device is cpu (gloo), or cuda (NCCL, cuda:LOCAL_RANK) when NEVA_TP_TEST_DEVICE=cuda.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from neva_model import Engine, Request, SamplingParams, load_neva
from neva_model.parallel.launch import process_device, process_group


def parity(tp, device, out: Path, checkpoints: list[str]) -> dict:
    inputs = torch.load(out / "inputs.pt", map_location=device)
    results = {}
    for directory in checkpoints:
        model = load_neva(directory, device=device, tensor_parallel=tp)
        with torch.no_grad():
            logits = model.forward_expanded(inputs["input_ids"], inputs["pixel_values"])
        requests = [Request(ids, pixels, SamplingParams(**sampling)) for ids, pixels, sampling in inputs["requests"]]
        engine = Engine(model, max_batch_size=len(requests), max_seq_len=64, block_size=4)
        torch.manual_seed(tp.rank)
        answers = [completion.token_ids for completion in engine.generate(requests)]
        results[directory] = {"logits": logits, "answers": answers, "cache_kv_heads": engine.cache.k.shape[-2]}
    return results


def shipped(tp, device) -> list[str]:
    import json

    from neva_model.image import preprocess_images
    from neva_model.tokenizer import load_tokenizer
    from neva_model.train import DEFAULT_CHECKPOINT, DEFAULT_EXAMPLES
    from neva_model.train.evaluate import Asked, answer

    model = load_neva(DEFAULT_CHECKPOINT, device=device, tensor_parallel=tp)
    size = model.config.vision.image_size
    catalogue = json.loads((DEFAULT_EXAMPLES / "questions.json").read_text())
    asked = [Asked(item["question"], preprocess_images(DEFAULT_EXAMPLES / name, size).to(device))
             for name, items in catalogue.items() for item in items]
    return [completion.text for completion in answer(model, load_tokenizer(DEFAULT_CHECKPOINT), asked)]


def _failing_decode_step(engine, outputs) -> None:
    raise RuntimeError("decode step failed (test)")


def main() -> None:
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "neva":
        from neva_model import cli

        rank, models = os.environ["RANK"], sys.argv[2].split(",")
        if os.environ.get("FAIL_DECODE_ON_RANK") == rank:
            Engine._decode_step = _failing_decode_step
        sys.exit(cli.main([*sys.argv[3:], "--model", models[int(rank)]]))
    out = Path(sys.argv[2])
    device = process_device(torch.device(os.environ.get("NEVA_TP_TEST_DEVICE", "cpu")))
    with process_group(device) as tp:
        results = parity(tp, device, out, sys.argv[3:]) if mode == "parity" else shipped(tp, device)
        torch.save(results, out / f"rank{tp.rank}.pt")


if __name__ == "__main__":
    main()
