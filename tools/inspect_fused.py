"""What the compiler makes of the fused MSM kernel, without a GPU (a developer tool).

Compiles the kernel of ``sklearn_musc._msm_fused`` for NVIDIA architectures
with Triton's bundled ptxas and reads the machine code back with its
cuobjdump: for each matmul precision and each block shape the autotuner may
try, the shared memory per block (shapes over the GPU's limit are dropped at
run time), registers per thread, stack bytes and local loads/stores
(register spills), and the count of matrix instructions (HGMMA: Hopper's
warpgroup MMA; HMMA: Ampere's; FFMA: CUDA-core float32).
``tests/test_fused.py`` loads :func:`compile_for` and :func:`machine_code`
from this file to check the same on every test run.

    python tools/inspect_fused.py               # sm_90 (H100/H200) and sm_80 (A100)
    python tools/inspect_fused.py --arch 90 --dim 768
"""

import argparse
import os
import re
import subprocess
import tempfile

import triton

from sklearn_musc import _msm_fused

# Shared memory one block may use, bytes, by compute capability
SHARED_MEMORY = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def compile_for(arch, matmul_precision, block, C=1024):
    """Compile the kernel for an NVIDIA architecture (e.g. 90) without a GPU.

    Parameters
    ----------
    arch : int
        Compute capability, e.g. 80 (A100) or 90 (H100).
    matmul_precision : {"float32", "tf32", "bfloat16"}
        As ``MutualScoringDetector(matmul_precision=...)``.
    block : (BM, BN, BK, num_warps, num_stages)
        One of the shapes of ``_msm_fused.CONFIGS``.
    C : int, default=1024
        Feature width (a compile-time constant of the kernel).

    Returns
    -------
    kernel
        Triton's compiled kernel: ``.asm`` holds "ptx" and "cubin",
        ``.metadata`` the shared memory and registers.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bm, bn, bk, warps, stages = block
    dtype = "*bf16" if matmul_precision == "bfloat16" else "*fp32"
    signature = {"A": dtype, "B": dtype, "T": "*fp32", "IA": "*i32", "JB": "*i32"}
    signature.update(dict.fromkeys(("a_off", "b_off", "n_table", "L"), "i32"))
    constants = {"C": C, "BM": bm, "BN": bn, "BK": bk, "PREC": "tf32" if matmul_precision == "tf32" else "ieee"}
    signature.update(dict.fromkeys(constants, "constexpr"))
    kernel = _msm_fused._kernel()
    # As at run time for torch's allocations: pointers 16-byte aligned
    aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in "A B T IA JB".split()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned)
    return triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": warps, "num_stages": stages, "enable_fp_fusion": True},
    )


def machine_code(kernel):
    """(SASS, resource usage) of a kernel from :func:`compile_for`, by Triton's cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return tuple(
            subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout
            for flag in ("-sass", "-res-usage")
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--dim", type=int, default=1024, help="feature width C (a compile-time constant)")
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__}, C = {args.dim}")
    print("arch  precision  BM  BN  BK warps stages shared_KiB fits regs stack_B spills  mma_instr")
    for arch in args.arch:
        for precision in ("bfloat16", "tf32", "float32"):
            configs = _msm_fused.CONFIGS["float32" if precision == "float32" else "tensor_cores"]
            for block in configs:
                kernel = compile_for(arch, precision, block, C=args.dim)
                sass, usage = machine_code(kernel)
                regs = re.search(r"REG:(\d+)", usage)
                stack = re.search(r"STACK:(\d+)", usage)
                spills = len(re.findall(r"\b(?:LDL|STL)\b", sass))
                ops = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HGMMA", "HMMA", "FFMA")}
                op = max(ops, key=ops.get)
                fits = kernel.metadata.shared <= SHARED_MEMORY.get(arch, 99 * 1024)
                print(f"sm_{arch} {precision:9s} {block[0]:3d} {block[1]:3d} {block[2]:3d} {block[3]:5d} "
                      f"{block[4]:6d} {kernel.metadata.shared / 1024:10.0f} {'yes' if fits else 'no ':4s} "
                      f"{regs.group(1) if regs else '?':>4s} {stack.group(1) if stack else '?':>7s} {spills:6d}  "
                      f"{ops[op]} {op}")


if __name__ == "__main__":
    main()
