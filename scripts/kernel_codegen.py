"""Compile the scan kernels and the INT8 GEMM for a CUDA architecture without a GPU and count what
their code does per launch: for the scans warp shuffles, shared-memory traffic, barriers, exp2
(and those that keep subnormal results), global loads, registers, spilled bytes and the SASS
instructions of one token step (the loop body); for the GEMM its tensor-core instructions and
asynchronous copies (a pipelined main loop).

A CPU-only check of the register layout the module docstring of
ptq4vm_fx/kernels/selective_scan.py promises (tests/kernels/test_codegen.py runs it), and a
quick way to compare kernel variants before a GPU is at hand:

    python scripts/kernel_codegen.py --block-d 32 --warps 1 --arch 90 [--dtype fp16]

The launch is specialized as Triton specializes the wrappers' launch for Vim-S at batch 128:
activations stored token-major (unit stride along channels), B and C with unit stride along the
state axis, A channel-major, D and N that fill their blocks, the bidirectional scan storing only
the codes (STORE_OUT off: Vim reads its float output only through out_proj's quantizer); 32-bit
sizes and strides, 16-byte aligned pointers, and the sizes and strides that are multiples of 16
marked so (all but L and B / C's strides along tokens and batch: x_proj's output has 56 columns),
and the bidirectional scan's register cap (selective_scan.bidirectional_maxnreg; --maxnreg
overrides the launches' caps, 0 lifts them).
Must run without TRITON_INTERPRET (the script clears it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: jit must compile, not interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptq4vm_fx.kernels import int8_linear as gemm  # noqa: E402
from ptq4vm_fx.kernels import selective_scan as scan  # noqa: E402

# strides the wrappers pass as 1 (Triton specializes them to the constant 1): activations
# token-major, B and C column slices of x_proj's output, A channel-major
UNIT_STRIDES = {
    "_selective_scan_kernel": ("s_ud", "s_td", "s_zd", "s_od", "s_bn", "s_cn", "s_ad"),
    "_bidirectional_scan_kernel": ("s_ufd", "s_tfd", "s_ubd", "s_tbd", "s_zd", "s_ad", "s_od", "s_qd",
                                   "s_bfn", "s_cfn", "s_bbn", "s_cbn", "s_afd", "s_abd"),
}
POINTER_TYPES = {"q_ptr": "*i8", "zp_ptr": "*i32"}
# pointers that stay fp32 whatever the activations' dtype: A, D, delta_bias, the quantization parameters
FP32_POINTERS = ("A_ptr", "Af_ptr", "Ab_ptr", "D_ptr", "Df_ptr", "Db_ptr", "dbias_ptr", "dbf_ptr", "dbb_ptr",
                 "inv_smooth_ptr", "inv_scale_ptr")
# 32-bit sizes and strides that are not multiples of 16 in the Vim-S launch
NOT_DIVISIBLE = ("L", "s_bb", "s_bl", "s_cb", "s_cl", "s_bfb", "s_bfl", "s_cfb", "s_cfl", "s_bbb", "s_bbl", "s_cbb",
                 "s_cbl")
COUNTED = {"shfl": "shfl.sync", "bar_sync": "bar.sync", "ld_shared": "ld.shared", "st_shared": "st.shared",
           "ex2": "ex2.approx", "ex2_subnormal": "ex2.approx.f32", "ld_global": "ld.global", "st_global": "st.global"}


def compile_kernel(name: str, block_d: int, block_n: int, num_warps: int, arch: int, dtype: str = "fp32",
                   maxnreg: int | None = -1):
    """Compile ``scan.<name>`` with every feature flag on, for sm_<arch>, activations (u, delta, B, C,
    z, the output and the scratch) in ``dtype``, at most ``maxnreg`` registers per thread (-1: the
    launch's cap, None: no cap); returns Triton's compiled kernel."""
    if maxnreg == -1:
        maxnreg = scan.bidirectional_maxnreg(block_d, num_warps) if name == "_bidirectional_scan_kernel" else None
    fn = getattr(scan, name)
    signature, constants, attrs = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg.endswith("_ptr"):
            signature[arg] = POINTER_TYPES.get(arg, "*fp32" if arg in FP32_POINTERS else f"*{dtype}")
            if not fn.params[i].do_not_specialize_on_alignment:  # as the launch specializes it
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("Dm", "N", "L") or arg.startswith("s_"):
            signature[arg] = "i32"
            if arg not in NOT_DIVISIBLE:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("qmin", "qmax"):
            signature[arg] = "fp32"
        else:  # constexpr flags and block sizes
            constants[arg] = {"BLOCK_D": block_d, "BLOCK_N": block_n}.get(arg, arg not in ("REVERSE", "STORE_OUT"))
            signature[arg] = "constexpr"
    for arg in UNIT_STRIDES[name]:
        constants[arg], signature[arg] = 1, "constexpr"
        attrs.pop((fn.arg_names.index(arg),), None)
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": 2,
                                   **({"maxnreg": maxnreg} if maxnreg else {})})


def cuobjdump(cubin: bytes, flag: str) -> str | None:
    """The bundled cuobjdump's output for ``flag`` (-res-usage, -sass), or None where it is missing."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ptq4vm-codegen-{os.getpid()}.cubin"
    try:
        path.write_bytes(cubin)
        return subprocess.run([str(tool), flag, str(path)], capture_output=True, text=True).stdout
    finally:
        path.unlink(missing_ok=True)


def resources(cubin: bytes) -> dict:
    """{"registers": per thread, "stack_bytes": per thread (registers spilled under a cap)}, None
    without cuobjdump."""
    usage = cuobjdump(cubin, "-res-usage") or ""
    found = {"registers": re.search(r"REG:(\d+)", usage), "stack_bytes": re.search(r"STACK:(\d+)", usage)}
    return {key: int(match.group(1)) if match else None for key, match in found.items()}


def loop_instructions(cubin: bytes) -> int | None:
    """SASS instructions of the kernel's longest loop, its back edge's target to the back edge (the
    scan's token step, both branches of its half-way test), or None without cuobjdump."""
    sass = cuobjdump(cubin, "-sass")
    if sass is None:
        return None
    addresses = [int(a, 16) for a in re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+\S", sass, re.M)]
    back_edges = [(int(at, 16), int(to, 16))
                  for at, to in re.findall(r"^\s+/\*([0-9a-f]{4,})\*/.*?\bBRA\b[^;]*?0x([0-9a-f]+)", sass, re.M)
                  if int(to, 16) < int(at, 16)]
    if not back_edges:
        return 0
    at, to = max(back_edges, key=lambda edge: edge[0] - edge[1])
    return sum(to <= a <= at for a in addresses)


def stats(name: str, block_d: int, block_n: int, num_warps: int, arch: int, dtype: str = "fp32",
          maxnreg: int | None = -1) -> dict:
    """{counted op: occurrences in the PTX} plus "registers", "stack_bytes" and "loop_instructions"
    for one kernel and launch shape."""
    compiled = compile_kernel(name, block_d, block_n, num_warps, arch, dtype, maxnreg)
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    out = {key: ptx.count(op) for key, op in COUNTED.items()}
    out.update(resources(cubin), loop_instructions=loop_instructions(cubin))
    return out


GEMM_POINTERS = {"xq_ptr": "*i8", "wq_ptr": "*i8", "q_ptr": "*i8", "colsum_ptr": "*i32", "zp_ptr": "*i32",
                 "qzp_ptr": "*i32"}


def gemm_stats(arch: int, dtype: str = "fp32", M: int = 128 * 197, N: int = 1536, K: int = 384,
               persistent: bool = False) -> dict:
    """The INT8 GEMM compiled as Triton specializes the launch of Vim-S's in_proj at batch 128 (default
    M, N, K) with :func:`~ptq4vm_fx.kernels.int8_linear.fixed_config`'s tiles (``persistent``: walked
    by a program per SM of an H100) and its output in ``dtype``: {"wgmma": warpgroup MMAs,
    "cp_async": asynchronous global -> shared copies (the main loop is software pipelined),
    "ld_global", "registers", "tiles"}."""
    fn = gemm._int8_linear_kernel
    tiles = gemm.fixed_config(M, N, K)
    cfg = triton.Config({**tiles.kwargs, "PERSISTENT": persistent}, num_warps=tiles.num_warps,
                        num_stages=tiles.num_stages)
    values = {"M": M, "N": N, "K": K, "L": 197, "M_BUCKET": triton.next_power_of_2(M), "NUM_PROGRAMS": 132,
              "stride_xm": K, "stride_wn": K, "stride_ym": N, "stride_qm": N}
    constants = {**cfg.kwargs, "HAS_BIAS": False, "QUANT": False, "HAS_SMOOTH": False,
                 "stride_xk": 1, "stride_wk": 1, "stride_yn": 1}
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constants:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = GEMM_POINTERS.get(arg, f"*{dtype}" if arg == "y_ptr" else "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("qmin", "qmax"):
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
            if values.get(arg, 1) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                                       "enable_fp_fusion": False})
    ptx = compiled.asm["ptx"]
    return {"wgmma": ptx.count("wgmma.mma_async"), "cp_async": ptx.count("cp.async"),
            "ld_global": ptx.count("ld.global"), "registers": resources(compiled.asm["cubin"])["registers"],
            "tiles": str(cfg)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-d", type=int, default=32)
    parser.add_argument("--block-n", type=int, default=16)
    parser.add_argument("--warps", type=int, default=1)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="the activations' dtype (a model run in half precision: fp16 / bf16)")
    parser.add_argument("--maxnreg", type=int, default=-1,
                        help="the scans' register cap per thread (0: none; default: each launch's own)")
    args = parser.parse_args()
    result = {name: stats(name, args.block_d, args.block_n, args.warps, args.arch, args.dtype, args.maxnreg or None)
              for name in UNIT_STRIDES}
    result["_int8_linear_kernel"] = gemm_stats(args.arch, args.dtype)
    result["_int8_linear_kernel persistent"] = gemm_stats(args.arch, args.dtype, persistent=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
