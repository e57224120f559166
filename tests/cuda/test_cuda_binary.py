"""The machine code of the built extension, read without a GPU: no kernel spills, and the decode kernel uses the
intended copy instructions per architecture (cp.async = LDGSTS on sm_80, cp.async.bulk = UBLKCP completing on an
mbarrier on sm_90a); the sm_90a-only kernels trap in other cubins, and ptxas compiles their sources without
serializing wgmma."""
import functools
import glob
import os
import re
import shutil
import subprocess

import pytest

import neva_kernels as nk
from neva_kernels import cuda_archs
from neva_kernels.cuda_backend import COMPILED
from tests.test_extension import CUOBJDUMP, names_architectures, needs_extension

pytestmark = [needs_extension, names_architectures]

DTYPES = ("6__half", "13__nv_bfloat16", "f")  # as the mangled template arguments spell them
ARCHS = set(cuda_archs.arch_names(cuda_archs.requested()))
CSRC = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
NVCC = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")


def cuobjdump(*flags: str) -> str:
    return subprocess.run([CUOBJDUMP, *flags, nk._C.__file__], capture_output=True, text=True, check=True).stdout


def per_arch_function(text: str, header: str) -> dict[tuple[str, str], str]:
    """{(arch, mangled function name): its section of cuobjdump's output}; `header` starts a function's section."""
    sections, arch = {}, None
    for block in re.split(r"(?m)^(?=\s*(?:arch = |" + re.escape(header) + "))", text):
        if m := re.match(r"\s*arch = (sm_\w+)", block):
            arch = m.group(1)
        elif m := re.match(r"\s*" + re.escape(header) + r"\s*(\S+?):?\s*\n", block):
            sections[(arch, m.group(1))] = block
    return sections


@functools.cache
def resource_usage() -> dict[tuple[str, str], str]:
    return per_arch_function(cuobjdump("--dump-resource-usage"), "Function")


@functools.cache
def sass() -> dict[tuple[str, str], str]:
    return per_arch_function(cuobjdump("--dump-sass"), "Function :")


def ours(name: str) -> bool:
    return name.startswith("_ZN4neva")


def test_every_kernel_is_compiled_for_every_architecture():
    for arch in ARCHS:
        names = {name for (a, name) in resource_usage() if a == arch and ours(name)}
        for dtype in DTYPES:
            # Exactly the head dims the extension reports (compiled_shapes, read by cuda_backend) are compiled.
            decode = re.compile(rf"_ZN4neva6decode19paged_decode_kernelI{dtype}Li(\d+)EEEvNS_17PagedDecodeParamsE")
            assert {int(m.group(1)) for n in names if (m := decode.fullmatch(n))} == set(COMPILED.decode_head_dims)
            for center in ("0", "1"):  # RMSNorm and LayerNorm instances of the row-norm kernel
                assert any(re.search(rf"row_norm_kernelI{dtype}Li\d+ELb[01]ELb{center}E", n) for n in names), \
                    (arch, dtype, center)
        assert any("append_kv_cache_kernel" in n for n in names), arch


def test_no_kernel_spills_or_uses_a_stack():
    usage = {key: text for key, text in resource_usage().items() if ours(key[1])}
    assert len(usage) > 50, "expected every kernel instantiation of the extension"
    for (arch, name), text in usage.items():
        stack, local = (int(re.search(rf"{field}:(\d+)", text).group(1)) for field in ("STACK", "LOCAL"))
        assert stack == 0 and local == 0, f"{name} on {arch}: stack {stack}, local {local} bytes (spills)"


def decode_kernels(arch: str) -> dict[str, str]:
    return {name: text for (a, name), text in sass().items() if a == arch and "paged_decode_kernel" in name}


@pytest.mark.skipif("sm_80" not in ARCHS, reason="not built for sm_80")
def test_sm80_decode_double_buffers_with_cp_async():
    kernels = decode_kernels("sm_80")
    assert len(kernels) == len(COMPILED.decode_head_dims) * len(DTYPES)
    for name, code in kernels.items():
        assert "LDGSTS" in code and "LDGDEPBAR" in code, f"{name}: no cp.async in its sm_80 code"
        assert "UBLKCP" not in code


@pytest.mark.skipif("sm_90a" not in ARCHS, reason="not built for sm_90a")
def test_sm90a_decode_uses_bulk_copies_on_an_mbarrier():
    kernels = decode_kernels("sm_90a")
    assert len(kernels) == len(COMPILED.decode_head_dims) * len(DTYPES)
    for name, code in kernels.items():
        assert "UBLKCP" in code, f"{name}: no cp.async.bulk in its sm_90a code"
        assert "SYNCS" in code, f"{name}: no mbarrier operation in its sm_90a code"
        assert "LDGSTS" not in code


# ---- flash attention forward -------------------------------------------------------------------------------

FLASH_KERNEL = re.compile(r"_ZN4neva5flash25flash_forward_(sm80|sm90)_kernelI(6__half|13__nv_bfloat16)Li(\d+)"
                          r"ELb([01])EEEvN.*")


def flash_kernels(arch: str, path: str) -> dict[tuple[str, int, bool], str]:
    """{(dtype, head dim, causal): SASS} of the flash attention forward `path` ("sm80", "sm90") compiled for `arch`."""
    return {(m.group(2), int(m.group(3)), m.group(4) == "1"): code for (a, name), code in sass().items()
            if a == arch and (m := FLASH_KERNEL.fullmatch(name)) and m.group(1) == path}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_flash_attention_kernels_are_compiled_for_their_head_dims(arch):
    # The sm80 kernel is also Hopper's fallback for head dims the wgmma kernel lacks, and the sm80 path benchmarks
    # measure there; the sm90 instances of the sm_80 cubin are empty (their body needs sm_90a).
    for path, head_dims in (("sm80", COMPILED.flash_head_dims), ("sm90", COMPILED.flash_sm90_head_dims)):
        expected = {(dtype, d, causal) for dtype in ("6__half", "13__nv_bfloat16") for d in head_dims
                    for causal in (False, True)}
        assert set(flash_kernels(arch, path)) == expected, path


@pytest.mark.skipif("sm_80" not in ARCHS, reason="not built for sm_80")
def test_sm80_flash_attention_runs_on_tensor_cores_fed_by_cp_async():
    for key, code in flash_kernels("sm_80", "sm80").items():
        assert "HMMA.16816.F32" in code, f"{key}: no mma.sync m16n8k16 with fp32 accumulation"
        assert "LDGSTS" in code and "LDGDEPBAR" in code, f"{key}: K/V tiles not streamed by cp.async"
        assert "LDSM.16.M88.4" in code and "LDSM.16.MT88.4" in code, f"{key}: no ldmatrix (plain and transposed)"


@pytest.mark.skipif("sm_90a" not in ARCHS, reason="not built for sm_90a")
def test_sm90a_flash_attention_runs_wgmma_on_tma_tiles_in_specialized_warpgroups():
    for (dtype, head_dim, causal), code in flash_kernels("sm_90a", "sm90").items():
        key = (dtype, head_dim, causal)
        assert "HGMMA.64x128x16.F32" in code, f"{key}: no wgmma m64n128k16 (S = Q K^T) with fp32 accumulation"
        assert f"HGMMA.64x{head_dim}x16.F32" in code, f"{key}: no wgmma m64n{head_dim}k16 (O += P V)"
        assert "UTMALDG.4D" in code, f"{key}: Q/K/V tiles not loaded by TMA"
        assert "SYNCS.PHASECHK" in code, f"{key}: no mbarrier wait"
        assert "USETMAXREG" in code, f"{key}: no setmaxnreg (producer / consumer register split)"
        assert "HMMA" not in code and "LDGSTS" not in code



@pytest.mark.parametrize("arch", sorted(ARCHS - {"sm_90a"}))
def test_sm90a_kernels_trap_in_the_other_cubins(arch):
    # Their bodies need sm_90a: launched from another cubin they must fail loudly, not leave the outputs unwritten.
    kernels = {**flash_kernels(arch, "sm90"), **projector_kernels(arch, "sm90")}
    assert len(kernels) == 4 * len(COMPILED.flash_sm90_head_dims) + 2
    for key, code in kernels.items():
        assert "BPT.TRAP" in code, f"{key}: no trap in its {arch} code"


SM90A_SOURCES = sorted(glob.glob(os.path.join(CSRC, "launch", "flash_attention_instances", "forward_sm90_*.cu")) +
                       [os.path.join(CSRC, "launch", "project_linear_sm90.cu")])


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="no nvcc")
@pytest.mark.parametrize("source", SM90A_SOURCES, ids=os.path.basename)
def test_ptxas_keeps_the_wgmma_schedule_of_the_sm90a_sources(source, tmp_path):
    # ptxas serializes wgmma whose register operands may change between wgmma.fence and the wgmma, saying so only
    # as an info line of the build (C7519, "warpgroup.arrive is injected"): nothing else would catch it.
    result = subprocess.run([NVCC, "-std=c++20", "-O3", "--expt-relaxed-constexpr", f"-I{CSRC}",
                             '-DNEVA_CUDA_ARCHS="sm_90a"', "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
                             "-c", source, "-o", str(tmp_path / "kernel.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "C7519" not in result.stderr and "warning" not in result.stderr.lower(), result.stderr


# ---- projector GEMMs -------------------------------------------------------------------------------------

def projector_kernels(arch: str, path: str) -> dict[str, str]:
    """{mangled name: SASS} of the projector GEMM kernel `path` ("sm80" or "sm90") compiled for `arch`."""
    return {name: code for (a, name), code in sass().items() if a == arch and f"gemm_{path}13linear_kernel" in name}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_projector_sm80_gemm_is_compiled_for_both_dtypes(arch):
    # On Hopper it is what the sm80 path's benchmark measures.
    names = projector_kernels(arch, "sm80")
    assert len(names) == 2 and any("6__half" in n for n in names) and any("13__nv_bfloat16" in n for n in names)


@pytest.mark.skipif("sm_80" not in ARCHS, reason="not built for sm_80")
def test_sm80_projector_gemm_runs_on_tensor_cores_fed_by_cp_async():
    for name, code in projector_kernels("sm_80", "sm80").items():
        assert "HMMA.16816.F32" in code, f"{name}: no mma.sync m16n8k16 with fp32 accumulation"
        assert "LDGSTS" in code and "LDGDEPBAR" in code, f"{name}: tiles not streamed by cp.async"
        assert "LDSM.16.M88.4" in code, f"{name}: no ldmatrix"


@pytest.mark.skipif("sm_90a" not in ARCHS, reason="not built for sm_90a")
def test_sm90a_projector_gemm_runs_wgmma_on_tma_tiles():
    kernels = projector_kernels("sm_90a", "sm90")
    assert len(kernels) == 2
    for name, code in kernels.items():
        assert "HGMMA.64x256x16.F32" in code, f"{name}: no wgmma m64n256k16 with fp32 accumulation"
        assert "UTMALDG.2D" in code, f"{name}: tiles not loaded by TMA"
        assert "SYNCS.PHASECHK" in code, f"{name}: no mbarrier wait"
        assert "HMMA" not in code and "LDGSTS" not in code
