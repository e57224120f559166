"""Every memory-bound Triton kernel compiles ahead of time for sm_80 and sm_90a without register spills, in every
configuration the dispatcher can pick (tiles and warps from memory_bound_configs, bf16 and fp16).

All specs compile in two processes (tests/aot.py), one per architecture, run side by side.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest

from neva_kernels.architecture import GPU_GENERATIONS, capability_number
from neva_kernels.triton_kernels import memory_bound_configs as configs
from neva_kernels.triton_kernels.paged_decode_attention import GROUP_TILE
from tests.aot import compile_reports

DTYPES = ("bf16", "fp16")
MODULE = "neva_kernels.triton_kernels"
# Model shapes for the kernels whose tiles follow the model (heads, head dim) rather than a dispatcher table.
DECODE_HEAD_DIMS = (64, 80, 128, 256)
APPEND_SHAPES = ((32, 128), (8, 128), (2, 80), (1, 256))                  # (KV heads, head dim)
ROTARY_SHAPES = ((32, 32, 128, 128), (32, 8, 128, 64), (16, 2, 80, 80))  # (q heads, KV heads, head dim, rot dim)


def spec(kernel, arch, pointers, scalars, constexprs, num_warps, num_stages=1):
    """pointers: name -> element type; scalars: name -> i32/fp32; constexprs: name -> value."""
    signature = {name: f"*{t}" for name, t in pointers.items()} | scalars | {name: "constexpr" for name in constexprs}
    return {"kernel": f"{MODULE}.{kernel}", "signature": signature, "constexprs": constexprs,
            "capability": capability_number(arch), "num_warps": num_warps, "num_stages": num_stages}


def row_norm_blocks(max_hidden):
    return sorted({configs.row_norm_block(2 ** i) for i in range(max_hidden.bit_length())})


# rms_norm, and layer_norm with everything on (mean, bias, 1 + weight): the variants that hold the most registers.
ROW_NORMS = {"rms_norm": dict(CENTER=False, HAS_BIAS=False, ZERO_CENTERED_WEIGHT=False),
             "layer_norm": dict(CENTER=True, HAS_BIAS=True, ZERO_CENTERED_WEIGHT=True)}
BACKWARD_MAX_HIDDEN = {"rms_norm": configs.RMS_NORM_BACKWARD_MAX_HIDDEN,
                       "layer_norm": configs.LAYER_NORM_BACKWARD_MAX_HIDDEN}


def row_norm_specs(arch, dtype):
    for norm, flags in ROW_NORMS.items():
        for block in row_norm_blocks(configs.ROW_NORM_MAX_HIDDEN):
            for residual in (False, True):
                yield spec("row_norm:_row_norm_kernel", arch,
                           dict(x_ptr=dtype, residual_ptr=dtype, weight_ptr=dtype, bias_ptr=dtype, y_ptr=dtype,
                                h_ptr=dtype),
                           dict(x_row_stride="i32", residual_row_stride="i32", hidden="i32", eps="fp32"),
                           dict(HAS_RESIDUAL=residual, **flags, BLOCK=block),
                           configs.row_norm_launch(block, arch).num_warps)
        for block in row_norm_blocks(BACKWARD_MAX_HIDDEN[norm]):
            yield spec("row_norm:_row_norm_backward_kernel", arch,
                       dict(grad_y_ptr=dtype, h_ptr=dtype, weight_ptr=dtype, grad_h_ptr=dtype,
                            partial_grad_weight_ptr="fp32"),
                       dict(rows="i32", grad_y_row_stride="i32", h_row_stride="i32", hidden="i32", eps="fp32",
                            rows_per_program="i32"),
                       dict(CENTER=flags["CENTER"], ZERO_CENTERED_WEIGHT=flags["ZERO_CENTERED_WEIGHT"], BLOCK=block),
                       configs.row_norm_launch(block, arch).num_warps)


def decode_specs(arch, dtype):
    for head_dim in DECODE_HEAD_DIMS:
        config, tile = configs.decode_config(head_dim, arch), configs.decode_head_dim_tile(head_dim)
        for split in (False, True):
            yield spec("paged_decode_attention:_paged_decode_kernel", arch,
                       dict(q_ptr=dtype, k_cache_ptr=dtype, v_cache_ptr=dtype, block_tables_ptr="i32",
                            seq_lens_ptr="i32", out_ptr="fp32" if split else dtype, partial_lse_ptr="fp32"),
                       dict(q_batch_stride="i32", q_head_stride="i32", block_table_stride="i32", kv_heads="i32",
                            block_size="i32", group="i32", tokens_per_split="i32", scale_log2="fp32"),
                       dict(HEAD_DIM=head_dim, HEAD_DIM_TILE=tile, GROUP_TILE=GROUP_TILE,
                            TILE_TOKENS=config.tile_tokens, SPLIT=split, DOT_PRECISION="tf32"),
                       config.num_warps, config.num_stages)
        yield spec("paged_decode_attention:_merge_splits_kernel", arch,
                   dict(partial_out_ptr="fp32", partial_lse_ptr="fp32", out_ptr=dtype), dict(num_splits="i32"),
                   dict(HEAD_DIM=head_dim, HEAD_DIM_TILE=tile, MAX_SPLITS=configs.DECODE_MAX_SPLITS),
                   configs.per_token_launch(head_dim).num_warps)


def next_power_of_2(n):
    return 1 << (n - 1).bit_length()


def per_token_specs(arch, dtype):
    for kv_heads, head_dim in APPEND_SHAPES:
        yield spec("append_kv_cache:_append_kv_cache_kernel", arch,
                   dict(k_ptr=dtype, v_ptr=dtype, k_cache_ptr=dtype, v_cache_ptr=dtype, slot_mapping_ptr="i64"),
                   dict(k_token_stride="i32", k_head_stride="i32", v_token_stride="i32", v_head_stride="i32",
                        kv_heads="i32"),
                   dict(HEAD_DIM=head_dim, HEADS_TILE=next_power_of_2(kv_heads),
                        HEAD_DIM_TILE=next_power_of_2(head_dim)),
                   configs.per_token_launch(kv_heads * head_dim).num_warps)
    for q_heads, kv_heads, head_dim, rot_dim in ROTARY_SHAPES:
        for interleaved in (False, True):
            yield spec("rotary_embedding:_rotary_kernel", arch,
                       dict(q_ptr=dtype, k_ptr=dtype, positions_ptr="i64", cos_sin_ptr="fp32", q_out_ptr=dtype,
                            k_out_ptr=dtype),
                       dict(q_token_stride="i32", q_head_stride="i32", k_token_stride="i32", k_head_stride="i32",
                            cos_sin_stride="i32", q_heads="i32", k_heads="i32", rot_dim="i32"),
                       dict(HEAD_DIM=head_dim, Q_HEADS_TILE=next_power_of_2(q_heads),
                            K_HEADS_TILE=next_power_of_2(kv_heads), PAIRS_TILE=next_power_of_2(rot_dim // 2),
                            PASS_TILE=0 if rot_dim == head_dim else next_power_of_2(head_dim - rot_dim),
                            INTERLEAVED=interleaved),
                       configs.per_token_launch((q_heads + kv_heads) * head_dim).num_warps)


def all_specs(arch):
    return [s for dtype in DTYPES for make in (row_norm_specs, decode_specs, per_token_specs) for s in make(arch, dtype)]


@pytest.fixture(scope="module")
def reports():
    specs = [all_specs(arch) for arch in GPU_GENERATIONS]
    with ThreadPoolExecutor(len(specs)) as pool:
        results = list(pool.map(compile_reports, specs))
    return [(s, r) for spec_list, result in zip(specs, results) for s, r in zip(spec_list, result)]


def describe(spec):
    first_type = next(iter(spec["signature"].values()))  # the kernel's first pointer: its data type
    return f"{spec['kernel'].split(':')[1]} sm{spec['capability']} {first_type} {spec['constexprs']}"


def test_every_configuration_compiles_without_spills(reports):
    assert len(reports) == sum(len(all_specs(arch)) for arch in GPU_GENERATIONS)
    spilling = [f"{describe(s)}: {r['spill_store_bytes']} B stored, {r['spill_load_bytes']} B loaded"
                for s, r in reports if r["spill_store_bytes"] or r["spill_load_bytes"]]
    assert not spilling, "register spills:\n" + "\n".join(spilling)


def test_each_architecture_gets_its_own_target(reports):
    assert {r["arch"] for s, r in reports if s["capability"] == 80} == {"sm_80"}
    assert {r["arch"] for s, r in reports if s["capability"] == 90} == {"sm_90a"}


def test_decode_scores_run_on_tensor_cores_and_pipeline_the_pages(reports):
    """The GQA group x keys product uses mma, and K/V tiles stream through cp.async stages (num_stages > 1)."""
    decode = [(s, r) for s, r in reports if s["kernel"].endswith("_paged_decode_kernel")]
    assert decode and all(r["instructions"]["mma.sync"] for _, r in decode)
    assert all(r["instructions"]["cp.async"] for _, r in decode)
