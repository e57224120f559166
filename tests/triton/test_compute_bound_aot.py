"""The compute-bound Triton kernels compile ahead of time for sm_80 and sm_90a: tensor-core instructions
(wgmma on sm_90a, mma.sync on sm_80) and no register spills, in every tile configuration the dispatcher can pick
(compute_bound_configs), for bf16 and fp16 (see all_specs).

The kernels are compiled as Triton's launcher compiles them for real tensors: tensor pointers and the row/head
strides of [.., S, H, D] and weight tensors divisible by 16 (the launcher detects this per call; without it loads
are not vectorized and register counts are not those of a real launch).
Attention compiles causal (the superset of the masking code) over the padded layout; head dims 64, 128 and 256
(the three register tiles) and, for the forward, 80 (a tile with masked features).
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
import triton

from neva_kernels.architecture import GPU_GENERATIONS, capability_number
from neva_kernels.triton_kernels import compute_bound_configs as configs
from tests.aot import compile_reports

HEAD_DIMS = {64: (64,), 128: (128, 80), 256: (256,)}  # register tile -> the head dims compiled with it
MODULE = "neva_kernels.triton_kernels"
SCALARS = {"qk_scale": "fp32", "softmax_scale": "fp32"}


def spec(kernel: str, arg_names, operands: dict, constexprs: dict, aligned: tuple, gen: str, config) -> dict:
    """A tests.aot spec. operands: name -> element type of a pointer, or a full "tensordesc<...>" type; arguments
    named in neither operands, constexprs nor SCALARS are i32."""
    constexprs = {**constexprs, **config.kwargs}
    types = {name: t if t.startswith("tensordesc") else f"*{t}" for name, t in operands.items()}
    signature = {name: (types[name] if name in types else "constexpr" if name in constexprs
                        else SCALARS.get(name, "i32")) for name in arg_names}
    pointers = [name for name, t in types.items() if t.startswith("*")]
    return {"kernel": f"{MODULE}.{kernel}", "signature": signature, "capability": capability_number(gen),
            "constexprs": constexprs, "num_warps": config.num_warps,
            "num_stages": config.num_stages, "divisible_by_16": pointers + list(aligned)}


def attention_specs(gen: str, dtype: str, backward: bool):
    from neva_kernels.triton_kernels import flash_attention as fwd, flash_attention_backward as bwd
    tensors = dict(q_ptr=dtype, k_ptr=dtype, v_ptr=dtype, out_ptr=dtype, grad_out_ptr=dtype, dq_ptr=dtype,
                   dk_ptr=dtype, dv_ptr=dtype, lse_ptr="fp32", delta_ptr="fp32", grad_lse_ptr="fp32")
    for block_d, head_dims in HEAD_DIMS.items():
        kernels = [(fwd, fwd._flash_forward_kernel, configs.attention_forward_configs(block_d, gen), head_dims)]
        if backward:  # the masked-feature head dim only in the forward, to keep this file's compile time down
            kernels += [(bwd, bwd._dkdv_kernel, configs.attention_dkdv_configs(block_d, gen), head_dims[:1]),
                        (bwd, bwd._dq_kernel, configs.attention_dq_configs(block_d, gen), head_dims[:1])]
        if backward and block_d == 128:  # no matmul, one fixed launch: one head dim is enough
            kernels.append((bwd, bwd._preprocess_kernel, [triton.Config({"BLOCK_M": bwd.PREPROCESS_ROWS})], (128,)))
        for module, kernel, tiles, dims in kernels:
            names = kernel.arg_names
            for head_dim, config in ((d, c) for d in dims for c in tiles):
                flags = dict(cu_q_ptr=None, cu_k_ptr=None, CAUSAL=True, VARLEN=False, HEAD_DIM=head_dim,
                             BLOCK_D=block_d, DOT_PRECISION="tf32")
                yield spec(f"{module.__name__.rsplit('.', 1)[1]}:{kernel.__name__}", names,
                           {n: t for n, t in tensors.items() if n in names},
                           {n: value for n, value in flags.items() if n in names}, aligned_strides(names), gen, config)


def aligned_strides(arg_names) -> tuple:
    """Batch, row and head strides of [.., S, H, D] tensors; not the lse/delta strides (their row stride is 1)."""
    return tuple(n for n in arg_names if n.startswith("stride_") and not n.startswith(("stride_l", "stride_gl")))


def gemm_specs(gen: str, dtype: str, tma: bool = False):
    """The projector GEMM; with tma (sm90) x and w are tensor descriptors of the configuration's tiles."""
    from neva_kernels.triton_kernels.project_image_tokens import _linear_kernel
    # GEMM 1: bias + GELU into the hidden buffer; GEMM 2: bias, rows scattered into inputs_embeds.
    for gelu, rows in ((True, {}), (False, {"rows_ptr": "i64"})):
        flags = dict(HAS_BIAS=True, GELU=gelu, SCATTER=bool(rows), TMA=tma, DOT_PRECISION="tf32")
        if not rows:
            flags["rows_ptr"] = None
        for config in configs.gemm_configs(gen):
            tiles = config.kwargs
            x, w = ((f"tensordesc<{dtype}[{tiles[f'BLOCK_{rows_of}']},{tiles['BLOCK_K']}]>" for rows_of in "MN")
                    if tma else (dtype, dtype))
            yield spec("project_image_tokens:_linear_kernel", _linear_kernel.arg_names,
                       dict(x=x, w=w, bias_ptr=dtype, out_ptr=dtype) | rows, flags,
                       ("stride_xm", "stride_wn", "stride_om", "N", "K"), gen, config)


def all_specs(gen: str) -> list[dict]:
    """bf16: every kernel and configuration (and on sm90 the GEMM's TMA variant); fp16 (the same tiles, the same
    code but the MMA type): the forward and the projector GEMMs, whose tensor-core instructions the issue names."""
    tma = list(gemm_specs(gen, "bf16", tma=True)) if gen == "sm90" else []
    return [*attention_specs(gen, "bf16", backward=True), *gemm_specs(gen, "bf16"), *tma,
            *attention_specs(gen, "fp16", backward=False), *gemm_specs(gen, "fp16")]


@pytest.fixture(scope="module")
def reports():
    specs = [all_specs(gen) for gen in GPU_GENERATIONS]
    with ThreadPoolExecutor(len(specs)) as pool:  # one process per architecture, side by side
        results = list(pool.map(compile_reports, specs))
    return [(s, r) for spec_list, result in zip(specs, results) for s, r in zip(spec_list, result)]


def describe(spec: dict) -> str:
    dtype = next(iter(spec["signature"].values()))  # the kernel's first pointer: its data type
    tiles = {k: v for k, v in spec["constexprs"].items() if k.startswith(("BLOCK", "HEAD_DIM", "GELU", "TMA"))}
    return (f"{spec['kernel'].split(':')[1]} sm{spec['capability']} {dtype} {tiles} warps={spec['num_warps']} "
            f"stages={spec['num_stages']}")


def test_every_configuration_compiles_without_spills(reports):
    assert len(reports) == sum(len(all_specs(gen)) for gen in GPU_GENERATIONS)
    spilling = [f"{describe(s)}: {r['spill_store_bytes']} B stored, {r['spill_load_bytes']} B loaded"
                for s, r in reports if r["spill_store_bytes"] or r["spill_load_bytes"]]
    assert not spilling, "register spills:\n" + "\n".join(spilling)


def expected_mma(spec: dict) -> str:
    """mma.sync on sm80; wgmma on sm90, but for the head-dim-256 backward (see compute_bound_configs)."""
    kernel = spec["kernel"].split(":")[1]
    backward_256 = kernel in ("_dkdv_kernel", "_dq_kernel") and spec["constexprs"]["BLOCK_D"] == 256
    return "wgmma" if spec["capability"] == 90 and not backward_256 else "mma.sync"


def test_matmuls_run_on_tensor_cores(reports):
    """Forward attention, both backward kernels and both projector GEMMs use their generation's MMA."""
    with_matmuls = [(s, r) for s, r in reports if not s["kernel"].endswith("_preprocess_kernel")]
    assert {s["kernel"].split(":")[1] for s, _ in with_matmuls} == {"_flash_forward_kernel", "_dkdv_kernel",
                                                                     "_dq_kernel", "_linear_kernel"}
    missing = [f"{describe(s)}: no {expected_mma(s)}" for s, r in with_matmuls
               if not r["instructions"][expected_mma(s)]]
    assert not missing, "\n".join(missing)


def test_forward_and_projector_use_wgmma_on_sm90(reports):
    """The issue's check, spelled out: every sm90 forward/GEMM configuration, bf16 and fp16, holds wgmma."""
    sm90 = [(s, r) for s, r in reports if s["capability"] == 90
            and s["kernel"].endswith(("_flash_forward_kernel", "_linear_kernel"))]
    first_operands = {next(iter(s["signature"].values())) for s, _ in sm90}
    assert {d for d in ("bf16", "fp16") if any(d in t for t in first_operands)} == {"bf16", "fp16"}
    assert all(r["instructions"]["wgmma"] for _, r in sm90)


def test_projector_uses_tma_on_sm90(reports):
    """The descriptor variant of the GEMM loads its tiles with bulk tensor copies (cp.async.bulk.tensor)."""
    tma = [(s, r) for s, r in reports if s["constexprs"].get("TMA")]
    assert tma and all(s["capability"] == 90 for s, _ in tma)
    assert all(r["instructions"]["cp.async.bulk.tensor"] and r["instructions"]["wgmma"] for _, r in tma)


def test_tiles_stream_through_async_copies(reports):
    """K/V and GEMM operand tiles are pipelined with cp.async where the loop has stages (num_stages > 1)."""
    looping = [(s, r) for s, r in reports if s["num_stages"] > 1 and not s["kernel"].endswith("_preprocess_kernel")]
    missing = [describe(s) for s, r in looping if not r["instructions"]["cp.async"]]
    assert not missing, "no cp.async in:\n" + "\n".join(missing)

