"""`python -m neva_kernels.selfcheck`: run every op on every backend of this machine against the float64 reference.

Prints one row per (op, backend): whether it ran (or why it cannot run here), its largest absolute error
against the reference computed in float64 on the same inputs, and its median time per call. Exits 1 if a
backend that ran is off by more than a loose per-dtype bound (the tests apply the strict rule).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import neva_kernels as nk
from neva_kernels import backends, cuda_backend, reference

BOUND = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}  # loose: catches broken, not imprecise


def make_inputs(dtype: torch.dtype, device: torch.device) -> dict:
    """Odd-shaped inputs for every op, drawn in float64 and cast (so the reference sees the same values)."""
    g = torch.Generator().manual_seed(0)
    rand = (lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64))
    num_blocks, block_size, hkv, hq, d = 24, 16, 2, 8, 80
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, 3:21], mask[1, 10:28] = True, True
    tensors = dict(
        x=rand(5, 769), weight=rand(769), bias=rand(769), residual=rand(5, 769),
        q=rand(2, 77, hq, d), k=rand(2, 77, hkv, d), v=rand(2, 77, hkv, d),
        decode_q=rand(3, hq, d), k_cache=rand(num_blocks, block_size, hkv, d), v_cache=rand(num_blocks, block_size, hkv, d),
        new_k=rand(5, hkv, d), new_v=rand(5, hkv, d),
        cos_sin=reference.rotary_cos_sin_cache(d, 256, dtype=torch.float64),
        features=rand(2, 18, 48), w1=rand(96, 48) / 7, b1=rand(96), w2=rand(769, 96) / 10, b2=rand(769),
        embeds=rand(2, 50, 769),
    )
    out = {name: t.to(dtype=dtype, device=device) for name, t in tensors.items()}
    out.update(
        positions=torch.randint(0, 256, (2, 77), generator=g).to(device),
        block_tables=torch.randperm(num_blocks, generator=g)[:18].reshape(3, 6).to(torch.int32).to(device),
        seq_lens=torch.tensor([1, 37, 96], dtype=torch.int32, device=device),
        slots=torch.tensor([3, 40, -1, 200, 383], device=device),
        mask=mask.to(device),
    )
    return out


def _append(i, backend):
    k_cache, v_cache = i["k_cache"].clone(), i["v_cache"].clone()
    nk.append_kv_cache(i["new_k"], i["new_v"], k_cache, v_cache, i["slots"], backend=backend)
    return torch.stack((k_cache, v_cache))


CALLS = {
    "rms_norm": lambda i, b: torch.stack(nk.rms_norm(i["x"], i["weight"], 1e-6, residual=i["residual"], backend=b)),
    "layer_norm": lambda i, b: torch.stack(nk.layer_norm(i["x"], i["weight"], i["bias"], 1e-5, i["residual"],
                                                         zero_centered_weight=True, backend=b)),
    "flash_attention": lambda i, b: nk.flash_attention(i["q"], i["k"], i["v"], causal=True, backend=b),
    "paged_decode_attention": lambda i, b: nk.paged_decode_attention(i["decode_q"], i["k_cache"], i["v_cache"],
                                                                     i["block_tables"], i["seq_lens"], backend=b),
    "append_kv_cache": _append,
    "rotary_embedding": lambda i, b: nk.rotary_embedding(i["q"], i["k"], i["positions"], i["cos_sin"],
                                                         backend=b)[0],
    "project_image_tokens": lambda i, b: nk.project_image_tokens(i["features"], i["w1"], i["b1"], i["w2"], i["b2"],
                                                                 i["embeds"].clone(), i["mask"], backend=b),
}


def median_ms(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    inputs, truth_inputs = make_inputs(dtype, device), make_inputs(torch.float64, torch.device("cpu"))
    rows = []
    for op, call in CALLS.items():
        truth = call(truth_inputs, "torch")
        for backend in backends.BACKENDS:
            try:
                out = call(inputs, backend)
            except nk.BackendUnavailableError as error:
                reason = str(error).split("cannot run this call: ", 1)[-1]
                rows.append(dict(op=op, backend=backend, status=f"unavailable: {reason}"))
                continue
            error = (out.double().cpu() - truth).abs().max().item()
            ok = error <= BOUND[dtype] * max(1.0, truth.abs().max().item())
            rows.append(dict(op=op, backend=backend, status="ok" if ok else "WRONG", error=error,
                             ms=median_ms(lambda: call(inputs, backend), device, repeats)))
    return rows


def print_table(rows: list[dict], device: torch.device, dtype: torch.dtype) -> None:
    print(f"neva_kernels self-check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{str(dtype).removeprefix('torch.')}; extension: {cuda_backend.build_info()}")
    print(f"{'op':<24}{'backend':<9}{'max |error|':>13}{'ms/call':>10}  status")
    for row in rows:
        numbers = f"{row['error']:>13.2e}{row['ms']:>10.3f}" if "error" in row else f"{'-':>13}{'-':>10}"
        print(f"{row['op']:<24}{row['backend']:<9}{numbers}  {row['status']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rows = run(device, dtype, args.repeats)
    print_table(rows, device, dtype)
    return 1 if any(row["status"] == "WRONG" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
