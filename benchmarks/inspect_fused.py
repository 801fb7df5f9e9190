"""What the compiler makes of the fused MSM kernel, without a GPU.

Compiles ``sklearn_musc._msm_fused`` for NVIDIA architectures with Triton's
bundled ptxas and reads the machine code back with its cuobjdump: for each
precision and each block shape the autotuner may try, the shared memory per
block (shapes over the GPU's limit are dropped at run time), registers per
thread, stack bytes and local loads/stores (register spills), and the count of matrix instructions
(HGMMA: Hopper's warpgroup MMA; HMMA: Ampere's; FFMA: CUDA-core float32).

    python benchmarks/inspect_fused.py               # sm_90 (H100/H200) and sm_80 (A100)
    python benchmarks/inspect_fused.py --arch 90 --dim 768
"""

import argparse
import re

import triton

from sklearn_musc import _msm_fused


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
                kernel = _msm_fused.compile_for(arch, precision, block, C=args.dim)
                sass, usage = _msm_fused.machine_code(kernel)
                regs = re.search(r"REG:(\d+)", usage)
                stack = re.search(r"STACK:(\d+)", usage)
                spills = len(re.findall(r"\b(?:LDL|STL)\b", sass))
                ops = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HGMMA", "HMMA", "FFMA")}
                op = max(ops, key=ops.get)
                fits = kernel.metadata.shared <= _msm_fused.SHARED_MEMORY.get(arch, 99 * 1024)
                print(f"sm_{arch} {precision:9s} {block[0]:3d} {block[1]:3d} {block[2]:3d} {block[3]:5d} "
                      f"{block[4]:6d} {kernel.metadata.shared / 1024:10.0f} {'yes' if fits else 'no ':4s} "
                      f"{regs.group(1) if regs else '?':>4s} {stack.group(1) if stack else '?':>7s} {spills:6d}  "
                      f"{ops[op]} {op}")


if __name__ == "__main__":
    main()
