"""Compile the scan kernels and the INT8 GEMM for a CUDA architecture without a GPU and count what
their code does per launch: for the scans warp shuffles, shared-memory traffic, barriers, exp2
(and those that keep subnormal results), global loads, registers, spilled bytes and the SASS
instructions of one token step (the loop body); for the GEMM its tensor-core instructions and
asynchronous copies (a pipelined main loop).

Per (token, state, direction) element of a scan's token step (``elements_per_step`` a thread):
SASS instructions (``sass_per_element``: the longest path through one step of the longest loop, e.g. the
bidirectional kernel's second half; ``loop_instructions`` is that loop's static size), MUFU instructions,
``loops``: each token loop's longest step and MUFU, ``mean_*_per_element``: their mean over the loops (the
bidirectional kernel's two halves run L // 2 steps each: its cost per element over a whole walk), global
loads per step (by width), local-memory (spill) instructions, and the waves a
launch at Vim-S and Vim-B batch 128 makes on an H100 (programs / (132 SMs x programs an SM holds at
that register count)). ``--json PATH`` also writes the result to PATH.

A CPU-only check of the register layout the module docstring of
ptq4vm_fx/kernels/selective_scan.py promises (tests/kernels/test_codegen.py runs it), and a
quick way to compare kernel variants before a GPU is at hand:

    python scripts/kernel_codegen.py --block-d 32 --warps 1 --arch 90 [--dtype fp16] [--json codegen.json]

The launch is specialized as Triton specializes the wrappers' launch for Vim-S at batch 128:
activations stored token-major (unit stride along channels), B and C with unit stride along the
state axis, A channel-major, D and N that fill their blocks, the bidirectional scan storing only
the codes (STORE_OUT off: Vim reads its float output only through out_proj's quantizer), D, z,
softplus and the smoothed quantize on, no delta_bias (dt_proj keeps its bias); the ordered scan
(VMamba's cross scan, LocalVSSM's directions) with the same flags as a direction that adds into the sum
(ACCUMULATE on) and reads and writes through one order map (no scatter map, no z_order); 32-bit sizes and
strides, 16-byte aligned pointers, and the sizes and strides that are multiples of 16 marked so (all
but L and B / C's strides along tokens and batch: x_proj's output has 56 columns), B / C row offsets
as the launch proves them aligned (selective_scan.bc_row_align); the bidirectional scan with one channel a
thread reads A row-major each step (ROWS, selective_scan.BIDIRECTIONAL_A_ROWS; its records "A in registers"
hold it, channel-major), C's rows right after B's (C_AFTER_B: x_proj's output) and its
register cap (selective_scan.BIDIRECTIONAL_MAXNREG; --maxnreg overrides the launches' caps, 0 lifts
them).
The lowered fp32 Vim's bidirectional launch: SOFTPLUS off (dt_proj's GEMM applies it), and with Z_SILU on too
(in_proj's GEMM applies the SiLU), with those GEMMs' launches.
LocalVim's launches: the ordered scan with Z_ORDER and HAS_SCATTER on, HAS_Z and ACCUMULATE off (one direction)
and, in fp32, SOFTPLUS off (linear_softplus takes it); the conv1d + SiLU (no token loop: a program's SASS, per
element a thread) plain and with ORDERED, each with and without the fused quantize (conv_stats).
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
from ptq4vm_fx.kernels import quantize  # noqa: E402
from ptq4vm_fx.kernels import segmented_scan as segmented  # noqa: E402
from ptq4vm_fx.kernels import selective_scan as scan  # noqa: E402
from ptq4vm_fx.models.zoo import VIM_CONFIGS  # noqa: E402

# strides the wrappers pass as 1 (Triton specializes them to the constant 1): activations
# token-major, B and C column slices of x_proj's output, A channel-major
UNIT_STRIDES = {
    "_selective_scan_kernel": ("s_ud", "s_td", "s_zd", "s_od", "s_bn", "s_cn", "s_ad"),
    "_bidirectional_scan_kernel": ("s_ufd", "s_tfd", "s_ubd", "s_tbd", "s_zd", "s_ad", "s_od", "s_qd",
                                   "s_bfn", "s_cfn", "s_bbn", "s_cbn", "s_afd", "s_abd"),
    "_ordered_scan_kernel": ("s_ud", "s_td", "s_zd", "s_od", "s_bn", "s_cn", "s_ad"),
}
POINTER_TYPES = {"q_ptr": "*i8", "zp_ptr": "*i32", "order_ptr": "*i32", "scatter_ptr": "*i32",
                 "z_order_ptr": "*i32"}
# pointers that stay fp32 whatever the activations' dtype: A, D, delta_bias, the quantization parameters
FP32_POINTERS = ("A_ptr", "Af_ptr", "Ab_ptr", "D_ptr", "Df_ptr", "Db_ptr", "dbias_ptr", "dbf_ptr", "dbb_ptr",
                 "inv_smooth_ptr", "inv_scale_ptr", "carry_ptr")
# the small-batch scan (kernels/segmented_scan.py): its GPU launch (16 segments of 8 channels) at Vim-S, batch 1
SEGMENTED = "_segmented_scan_kernel"
SEGMENTED_LAUNCH = segmented.segment_config(1, 768, 16, 197)
# 32-bit sizes and strides that are not multiples of 16 in the Vim-S launch
NOT_DIVISIBLE = ("L", "S", "s_bb", "s_bl", "s_cb", "s_cl", "s_bfb", "s_bfl", "s_cfb", "s_cfl", "s_bbb", "s_bbl",
                 "s_cbb", "s_cbl")
COUNTED = {"shfl": "shfl.sync", "bar_sync": "bar.sync", "ld_shared": "ld.shared", "st_shared": "st.shared",
           "ex2": "ex2.approx", "ex2_subnormal": "ex2.approx.f32", "ld_global": "ld.global", "st_global": "st.global"}
DIRECTIONS = {"_selective_scan_kernel": 1, "_bidirectional_scan_kernel": 2, "_ordered_scan_kernel": 1}
# An H100 SXM SM (sm_90): 65536 registers, allocated per warp in units of 256; at most 64 warps and 32
# programs (CTAs) resident
H100_SMS, REGISTERS_PER_SM, REGISTER_UNIT, MAX_WARPS_PER_SM, MAX_PROGRAMS_PER_SM = 132, 65536, 256, 64, 32
WAVE_CASES = {"vim_small_patch16_224/b128": ("vim_small_patch16_224", 128),
              "vim_base_patch16_224/b128": ("vim_base_patch16_224", 128)}
_SASS_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)


def compile_kernel(name: str, block_d: int, block_n: int, num_warps: int, arch: int, dtype: str = "fp32",
                   maxnreg: int | None = -1, off: tuple[str, ...] = (), on: tuple[str, ...] = ()):
    """Compile ``scan.<name>`` with the Vim-S launch's feature flags, for sm_<arch>, activations (u, delta, B, C,
    z, the output and the scratch) in ``dtype``, at most ``maxnreg`` registers per thread (-1: the
    launch's cap, None: no cap), the constexpr flags named in ``off`` off (SOFTPLUS: the lowered Vim's
    launch, whose dt_proj GEMM applies the softplus) and those named in ``on`` on (Z_ORDER, HAS_SCATTER: LocalVim's
    sequence scan; Z_SILU: the lowered fp32 Vim's, whose in_proj GEMM applies the SiLU); returns Triton's compiled
    kernel."""
    if maxnreg == -1:
        maxnreg = scan.BIDIRECTIONAL_MAXNREG if name == "_bidirectional_scan_kernel" else None
    fn = getattr(segmented if name == SEGMENTED else scan, name)
    signature, constants, attrs = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg.endswith("_ptr"):
            signature[arg] = POINTER_TYPES.get(arg, "*fp32" if arg in FP32_POINTERS else f"*{dtype}")
            if not fn.params[i].do_not_specialize_on_alignment:  # as the launch specializes it
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("Dm", "N", "L", "S", "T") or arg.startswith("s_"):
            signature[arg] = "i32"
            if arg not in NOT_DIVISIBLE + ("T",):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("qmin", "qmax"):
            signature[arg] = "fp32"
        else:  # constexpr flags and block sizes
            values = {"BLOCK_D": block_d, "BLOCK_N": block_n, "BC_ALIGN": vim_s_bc_align(dtype),
                      "SEGMENTS": SEGMENTED_LAUNCH[1]}
            constants[arg] = values.get(arg, arg not in ("REVERSE", "STORE_OUT", "HAS_DBIAS", "HAS_DBF", "HAS_DBB",
                                                         "HAS_SCATTER", "Z_ORDER", "Z_SILU"))
            signature[arg] = "constexpr"
    constants.update(dict.fromkeys(off, False))
    constants.update(dict.fromkeys(on, True))
    unit = UNIT_STRIDES.get(name, UNIT_STRIDES["_selective_scan_kernel"])  # the segmented scan's too
    if name == "_bidirectional_scan_kernel":  # as the launch decides ROWS: A row-major (unit stride along N)
        constants["ROWS"] = rows = constants["ROWS"] and scan.reads_a_rows(block_d, num_warps, block_n, block_n)
        unit = tuple({"s_afd": "s_afn", "s_abd": "s_abn"}.get(arg, arg) if rows else arg for arg in unit)
    for arg in unit:
        constants[arg], signature[arg] = 1, "constexpr"
        attrs.pop((fn.arg_names.index(arg),), None)
    return triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": 2,
                                   **({"maxnreg": maxnreg} if maxnreg else {})})


def vim_s_bc_align(dtype: str) -> int:
    """The B / C row alignment the Vim-S launch proves (selective_scan.bc_row_align): B and C are column
    slices of x_proj's (batch, L, dt_rank + 2 d_state) output in ``dtype``."""
    cfg = VIM_CONFIGS["vim_small_patch16_224"]
    row = -(-cfg["embed_dim"] // 16) + 2 * cfg["d_state"]
    tokens = (cfg["img_size"] // cfg["patch_size"]) ** 2 + 1
    return scan.bc_row_align(4 if dtype == "fp32" else 2, tokens * row, row)


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


def instructions(sass: str) -> list[tuple[int, bool, str, str]]:
    """SASS as (address, predicated, opcode with modifiers, operands), in address order."""
    return [(int(a, 16), bool(pred), op, operands) for a, pred, op, operands in _SASS_LINE.findall(sass)]


def loops(code: list[tuple[int, bool, str, str]]) -> list[list[tuple[int, bool, str, str]]]:
    """The instructions of each of the kernel's loops, in address order: a back edge's target to the back
    edge (the scans' token loops: the bidirectional kernel's two halves, the small-batch scan's two passes)."""
    back_edges = sorted((_target(ops), addr) for addr, _, op, ops in code
                        if op.startswith("BRA") and _target(ops) < addr)
    return [[ins for ins in code if to <= ins[0] <= at] for to, at in back_edges]


def longest_loop(code: list[tuple[int, bool, str, str]]) -> list[tuple[int, bool, str, str]]:
    """The instructions of the kernel's longest loop (:func:`loops`); empty without a loop."""
    return max(loops(code), key=len, default=[])


def _target(operands: str) -> int:
    return int(re.search(r"0x([0-9a-f]+)", operands).group(1), 16)


def step_lengths(loop: list[tuple[int, bool, str, str]]) -> tuple[int, int]:
    """(fewest, most) instructions one pass through ``loop`` executes: the paths from its first
    instruction to its back edge (the last), through its forward branches (predicated instructions
    issue, so they count); a conditional EXIT falls through, a jump out of the loop ends no step."""
    index = {addr: i for i, (addr, *_) in enumerate(loop)}
    last = len(loop) - 1
    spans: list[tuple[int, int] | None] = [None] * len(loop)  # (fewest, most) from i to the back edge
    spans[last] = (1, 1)
    for i in range(last - 1, -1, -1):
        _, predicated, op, operands = loop[i]
        successors = []
        if op.startswith("BRA"):
            successors.append(index.get(_target(operands)))
            if predicated:
                successors.append(i + 1)
        elif not (op.startswith("EXIT") and not predicated):
            successors.append(i + 1)
        reachable = [spans[j] for j in successors if j is not None and j > i and spans[j] is not None]
        if reachable:
            spans[i] = (1 + min(r[0] for r in reachable), 1 + max(r[1] for r in reachable))
    return spans[0] if spans[0] is not None else (0, 0)


def mufu_count(code: list[tuple[int, bool, str, str]]) -> int:
    """The MUFU (special-function unit) instructions of ``code``."""
    return sum(op.startswith("MUFU") for _, _, op, _ in code)


def global_loads(code: list[tuple[int, bool, str, str]]) -> tuple[int, dict[str, int]]:
    """(the LDG instructions of ``code``, their count by width: "128", "64", "32", "U8", ...)."""
    loads = [op for _, _, op, _ in code if op.startswith("LDG")]
    widths: dict[str, int] = {}
    for op in loads:
        width = next((w for w in ("128", "64", "U8", "S8", "U16", "S16") if f".{w}" in op), "32")
        widths[width] = widths.get(width, 0) + 1
    return len(loads), widths


def local_memory_instructions(code: list[tuple[int, bool, str, str]]) -> int:
    """The local-memory (spill) loads and stores of ``code``."""
    return sum(op.startswith(("LDL", "STL")) for _, _, op, _ in code)


def loop_stats(cubin: bytes, elements: int) -> dict:
    """Per token step of the kernel's longest loop, ``elements`` (token, state, direction) elements a
    thread: its static size, the instructions one step executes, MUFU instructions, global loads (and
    by width), per element; local-memory (spill) instructions of the whole kernel. None where
    cuobjdump is missing."""
    sass = cuobjdump(cubin, "-sass")
    if sass is None:
        return dict.fromkeys(("loop_instructions", "step_instructions", "sass_per_element", "mufu_per_step",
                              "mufu_per_element", "loops", "mean_sass_per_element", "mean_mufu_per_element",
                              "ldg_per_step", "ldg_bits", "local_memory_instructions"))
    code = instructions(sass)
    loop = longest_loop(code)
    fewest, most = step_lengths(loop) if loop else (0, 0)
    mufu = mufu_count(loop)
    each = [(step_lengths(body)[1], mufu_count(body)) for body in loops(code)]
    loads, widths = global_loads(loop)
    return {"loop_instructions": len(loop), "elements_per_step": elements, "step_instructions": [fewest, most],
            "sass_per_element": most / elements, "mufu_per_step": mufu, "mufu_per_element": mufu / elements,
            "loops": [{"step_instructions": n, "mufu_per_step": m} for n, m in each],
            "mean_sass_per_element": sum(n for n, _ in each) / len(each) / elements if each else 0,
            "mean_mufu_per_element": sum(m for _, m in each) / len(each) / elements if each else 0,
            "ldg_per_step": loads, "ldg_bits": widths, "local_memory_instructions": local_memory_instructions(code)}


def programs_per_sm(registers: int, num_warps: int) -> int:
    """Programs of ``num_warps`` warps at ``registers`` per thread an H100 SM holds at once (no shared
    memory used): the register file, the warp and the program limits."""
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    return min(REGISTERS_PER_SM // (per_warp * num_warps), MAX_WARPS_PER_SM // num_warps, MAX_PROGRAMS_PER_SM)


def waves(registers: int, block_d: int, num_warps: int) -> dict:
    """{case: {"programs", "programs_per_sm", "waves", "launch_block_d"}} for WAVE_CASES: a scan launch's
    (batch, D / block_d) programs over 132 SMs; ``launch_block_d`` is what the wrapper picks there."""
    per_sm = programs_per_sm(registers, num_warps)
    out = {}
    for case, (model, batch) in WAVE_CASES.items():
        d_inner = 2 * VIM_CONFIGS[model]["embed_dim"]
        programs = batch * -(-d_inner // block_d)
        out[case] = {"programs": programs, "programs_per_sm": per_sm, "waves": programs / (H100_SMS * per_sm),
                     "launch_block_d": scan._scan_config(batch, d_inner, VIM_CONFIGS[model]["d_state"])[0]}
    return out


def stats(name: str, block_d: int, block_n: int, num_warps: int, arch: int, dtype: str = "fp32",
          maxnreg: int | None = -1, off: tuple[str, ...] = (), on: tuple[str, ...] = ()) -> dict:
    """{counted op: occurrences in the PTX}, "registers", "stack_bytes" (spilled registers' bytes per
    thread), :func:`loop_stats` and :func:`waves` for one kernel and launch shape (``off``: as
    :func:`compile_kernel`)."""
    compiled = compile_kernel(name, block_d, block_n, num_warps, arch, dtype, maxnreg, off, on)
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    out = {key: ptx.count(op) for key, op in COUNTED.items()}
    out.update(resources(cubin))
    out.update(loop_stats(cubin, block_n * block_d * DIRECTIONS.get(name, 1) // (32 * num_warps)))
    if out["registers"] is not None:
        out["waves"] = waves(out["registers"], block_d, num_warps)
    return out


def segmented_stats(arch: int, dtype: str = "fp32") -> dict:
    """:func:`stats` of the small-batch scan's GPU launch (SEGMENTED_LAUNCH; the same flags as the single-direction
    scan's), its longest loop the emitting pass (the first pass is the same step without C, z and the store), and
    its programs at Vim-S / Vim-B batch 1 and 8."""
    block_d, segments, block_n, warps = SEGMENTED_LAUNCH
    out = stats(SEGMENTED, block_d, block_n, warps, arch, dtype)
    out["elements_per_step"] = segments * block_n * block_d // (32 * warps)
    if out["step_instructions"] is not None:  # per element of the launch's tile, not of the script's block
        out["sass_per_element"] = out["step_instructions"][1] / out["elements_per_step"]
        out["mufu_per_element"] = out["mufu_per_step"] / out["elements_per_step"]
        for key, field in (("mean_sass_per_element", "step_instructions"), ("mean_mufu_per_element", "mufu_per_step")):
            out[key] = sum(loop[field] for loop in out["loops"]) / len(out["loops"]) / out["elements_per_step"]
    out["launch"] = {"block_d": block_d, "segments": segments, "num_warps": warps}
    out.pop("waves", None)
    out["programs"] = {f"{model}/b{batch}": batch * -(-2 * VIM_CONFIGS[model]["embed_dim"] // block_d)
                       for model in ("vim_small_patch16_224", "vim_base_patch16_224") for batch in (1, 8)}
    return out


CONV = "_conv1d_silu_quantize_kernel"
CONV_POINTERS = {"q_ptr": "*i8", "zp_ptr": "*i32", "order_ptr": "*i32"}


def conv_stats(arch: int, dtype: str = "fp32", ordered: bool = False, quant: bool = False) -> dict:
    """The depthwise conv1d + SiLU (kernels/quantize.py) compiled as Triton specializes its launch at Vim-S
    (D = d_inner 768, 197 tokens, width 4, causal, with bias; x a column slice of in_proj's token-major
    output, u token-major, the weight (D, W) contiguous, _conv1d_config's 32 x 64 tile on 4 warps);
    ``ordered``: x read through an order map (LocalVim's ordered_conv1d_silu); ``quant``: the smoothed
    per-token quantize fused (conv1d_silu_quantize, LocalVim's lowered graph). No token loop: the counts are
    of the whole program, per (channel, token) element a thread (the tile / 128 threads = 16):
    {counted PTX ops, "registers", "stack_bytes", "sass_instructions", "sass_per_element", "mufu",
    "mufu_per_element", "ldg", "ldg_bits", "local_memory_instructions"}."""
    fn = quantize._conv1d_silu_quantize_kernel
    (cfg, num_warps), D, L, width = quantize._conv1d_config(768, 197), 768, 197, 4
    if quantize.interpret_mode():  # the GPU's tile, whatever the environment says
        cfg, num_warps = {"BLOCK_D": 32, "BLOCK_L": 64}, 4
    values = {"D": D, "L": L, "stride_xb": L * 2 * D, "stride_xl": 2 * D, "stride_wd": width,
              "stride_ub": D * L, "stride_ul": D, "stride_qb": L * D, "stride_ql": D}
    constants = {**cfg, "WIDTH": width, "REVERSE": False, "HAS_BIAS": True, "QUANT": quant, "HAS_SMOOTH": quant,
                 "ORDERED": ordered, "stride_xd": 1, "stride_ww": 1, "stride_ud": 1, "stride_qd": 1}
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constants:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = CONV_POINTERS.get(arg, f"*{dtype}" if arg in ("x_ptr", "u_ptr") else "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg in ("qmin", "qmax"):
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
            if values[arg] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": 2, "enable_fp_fusion": False})
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    out = {key: ptx.count(op) for key, op in COUNTED.items()}
    out.update(resources(cubin))
    elements = cfg["BLOCK_D"] * cfg["BLOCK_L"] // (32 * num_warps)
    sass = cuobjdump(cubin, "-sass")
    if sass is not None:
        code = instructions(sass)
        mufu, (loads, widths) = mufu_count(code), global_loads(code)
        out.update({"sass_instructions": len(code), "elements_per_thread": elements,
                    "sass_per_element": len(code) / elements, "mufu": mufu, "mufu_per_element": mufu / elements,
                    "ldg": loads, "ldg_bits": widths, "local_memory_instructions": local_memory_instructions(code)})
    out["launch"] = {**cfg, "num_warps": num_warps, "ordered": ordered, "quant": quant}
    return out


GEMM_POINTERS = {"xq_ptr": "*i8", "wq_ptr": "*i8", "q_ptr": "*i8", "colsum_ptr": "*i32", "zp_ptr": "*i32",
                 "qzp_ptr": "*i32"}


def gemm_stats(arch: int, dtype: str = "fp32", M: int = 128 * 197, N: int = 1536, K: int = 384,
               persistent: bool = False, softplus: bool = False, silu: bool = False) -> dict:
    """The INT8 GEMM compiled as Triton specializes the launch of Vim-S's in_proj at batch 128 (default
    M, N, K) with :func:`~ptq4vm_fx.kernels.int8_linear.fixed_config`'s tiles (``persistent``: walked
    by a program per SM of an H100) and its output in ``dtype``; ``softplus``: with a bias and the scan's
    softplus in the epilogue (dt_proj's launch in a lowered Vim); ``silu``: with the scan's SiLU on the columns
    from N / 2 (in_proj's launch in a lowered fp32 Vim): {"wgmma": warpgroup MMAs,
    "cp_async": asynchronous global -> shared copies (the main loop is software pipelined),
    "ld_global", "ex2", "registers", "tiles"}."""
    fn = gemm._int8_linear_kernel
    tiles = gemm.fixed_config(M, N, K)
    cfg = triton.Config({**tiles.kwargs, "PERSISTENT": persistent}, num_warps=tiles.num_warps,
                        num_stages=tiles.num_stages)
    values = {"M": M, "N": N, "K": K, "L": 197, "M_BUCKET": triton.next_power_of_2(M), "NUM_PROGRAMS": 132,
              "stride_xm": K, "stride_wn": K, "stride_ym": N, "stride_qm": N, "silu_start": N // 2}
    constants = {**cfg.kwargs, "HAS_BIAS": softplus, "SOFTPLUS": softplus, "HAS_DBIAS": False, "SILU": silu,
                 "QUANT": False, "HAS_SMOOTH": False,
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
            "ld_global": ptx.count("ld.global"), "ex2": ptx.count("ex2.approx"),
            "registers": resources(compiled.asm["cubin"])["registers"], "tiles": str(cfg)}


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
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    result = {"meta": {"arch": args.arch, "triton": triton.__version__, "dtype": args.dtype, "block_d": args.block_d,
                       "block_n": args.block_n, "warps": args.warps,
                       "maxnreg": "launch" if args.maxnreg == -1 else args.maxnreg or None, "sms": H100_SMS}}
    result.update({name: stats(name, args.block_d, args.block_n, args.warps, args.arch, args.dtype,
                               args.maxnreg or None) for name in UNIT_STRIDES})
    result["_int8_linear_kernel"] = gemm_stats(args.arch, args.dtype)
    result["_int8_linear_kernel persistent"] = gemm_stats(args.arch, args.dtype, persistent=True)
    # the lowered Vim-S (fp32): dt_proj's GEMM (K = dt_rank 24, N = d_inner 768) applies the scan's softplus and
    # the bidirectional scan runs without it
    result["_bidirectional_scan_kernel softplus in dt_proj"] = stats(
        "_bidirectional_scan_kernel", args.block_d, args.block_n, args.warps, args.arch, args.dtype,
        args.maxnreg or None, off=("SOFTPLUS",))
    # the same with both directions' A held in registers (ROWS off: BIDIRECTIONAL_A_ROWS False)
    result["_bidirectional_scan_kernel softplus in dt_proj, A in registers"] = stats(
        "_bidirectional_scan_kernel", args.block_d, args.block_n, args.warps, args.arch, args.dtype,
        args.maxnreg or None, off=("SOFTPLUS", "ROWS"))
    result["_int8_linear_kernel dt_proj softplus"] = gemm_stats(args.arch, "fp32", N=768, K=24, softplus=True)
    # and in_proj's GEMM applies the scan's SiLU to z (its columns from d_inner): the scan multiplies by z as read
    result["_bidirectional_scan_kernel silu in in_proj"] = stats(
        "_bidirectional_scan_kernel", args.block_d, args.block_n, args.warps, args.arch, args.dtype,
        args.maxnreg or None, off=("SOFTPLUS",), on=("Z_SILU",))
    result["_int8_linear_kernel in_proj silu"] = gemm_stats(args.arch, "fp32", silu=True)
    result[SEGMENTED] = segmented_stats(args.arch, args.dtype)
    # LocalVim's sequence scan (one direction: no ACCUMULATE; z read through z_order, the output written through
    # scatter, the wrapper's z_order; lowered in fp32, dt_proj's GEMM applies the softplus)
    result["_ordered_scan_kernel z_order"] = stats(
        "_ordered_scan_kernel", args.block_d, args.block_n, args.warps, args.arch, args.dtype, args.maxnreg or None,
        off=("HAS_Z", "ACCUMULATE") + (("SOFTPLUS",) if args.dtype == "fp32" else ()), on=("Z_ORDER", "HAS_SCATTER"))
    # the conv1d + SiLU: plain (Vim's float model; with the quantize its lowered graph), through LocalVim's order
    # map (ordered_conv1d_silu), and that with the quantize (LocalVim's lowered graph)
    result[CONV] = conv_stats(args.arch, args.dtype)
    result[f"{CONV} quant"] = conv_stats(args.arch, args.dtype, quant=True)
    result[f"{CONV} ordered"] = conv_stats(args.arch, args.dtype, ordered=True)
    result[f"{CONV} ordered quant"] = conv_stats(args.arch, args.dtype, ordered=True, quant=True)
    text = json.dumps(result, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
