"""Ahead-of-time compilation of Triton kernels for GPUs that are not here (sm_80, sm_90a), for CI checks.

`compile_reports(specs)` compiles each spec in ONE fresh Python process without TRITON_INTERPRET (the tests run
under the interpreter, whose @triton.jit wrappers cannot be compiled) and returns, per spec, what the PTX
contains and what the ptxas shipped inside the triton package reports (registers, spills, shared memory).

A spec: {"kernel": "neva_kernels.triton_kernels.row_norm:_row_norm_kernel", "signature": {"x_ptr": "*bf16",
"n": "i32", "BLOCK": "constexpr", ...}, "constexprs": {"BLOCK": 1024}, "capability": 90, "num_warps": 4,
"num_stages": 3, "divisible_by_16": ["x_ptr", "stride_row"]}. Every argument of the kernel appears in the
signature. "divisible_by_16" names the arguments that Triton's launcher would specialize at run time (pointers
16-byte aligned, integers multiples of 16): without it loads compile as scalar and register counts are pessimistic.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTX_INSTRUCTIONS = ("wgmma", "mma.sync", "cp.async.bulk.tensor", "cp.async", "setmaxnreg", "ld.global.v4")


def compile_reports(specs: list[dict]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.aot"], input=json.dumps(specs), capture_output=True,
                          text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"ahead-of-time compilation failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ptxas_usage(ptx: str) -> dict:
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    arch = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        report = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr
    number = (lambda pattern: sum(int(n) for n in re.findall(pattern, report)))
    return {"arch": arch, "registers": max(int(n) for n in re.findall(r"Used (\d+) registers", report)),
            "spill_store_bytes": number(r"(\d+) bytes spill stores"),
            "spill_load_bytes": number(r"(\d+) bytes spill loads")}


def _compile(spec: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    module, name = spec["kernel"].split(":")
    kernel = getattr(importlib.import_module(module), name)
    names = list(spec["signature"])
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in spec.get("divisible_by_16", ())}
    source = ASTSource(fn=kernel, signature=spec["signature"], constexprs=spec.get("constexprs", {}), attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", spec["capability"], 32),
                              options={"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)})
    ptx = compiled.asm["ptx"]
    return {"kernel": spec["kernel"], "capability": spec["capability"], "shared_bytes": compiled.metadata.shared,
            "instructions": {i: i in ptx for i in PTX_INSTRUCTIONS}, **_ptxas_usage(ptx)}


if __name__ == "__main__":
    print(json.dumps([_compile(spec) for spec in json.load(sys.stdin)]))
