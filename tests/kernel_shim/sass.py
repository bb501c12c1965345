"""A kernel's machine code, read without a GPU: compile a .cu for sm_90 with NVRTC 13 and cupy's options,
disassemble the cubin with nvdisasm 13, and report what matters to its speed.

NVRTC 13 and nvdisasm 13 come from the pip wheels ``nvidia-cuda-nvrtc`` and ``nvidia-cuda-nvdisasm`` (13.x),
which install under site-packages/nvidia/cu13/{lib,bin}.  ``report(source)`` returns, per kernel:

    registers, stack (bytes of stack frame), spill_stores, spill_loads (bytes, ptxas's -v report),
    shared (bytes of static shared memory), counts (opcode -> how many in the SASS: LD/ST are generic,
    LDS/STS shared, LDL/STL local, LDG/STG global; FFMA, BAR, SHFL, ...), sass (the disassembly's text).

cupy compiles a RawModule with ``-arch=sm_XY`` (the device's) plus ``-ftz=true --device-as-default-execution-space``
(CUPY_OPTIONS below) and the options the caller passes (fastnn's: ``cuda_fused.compile_options(batch_size)``).
"""

import ctypes
import re
import subprocess
import tempfile
from pathlib import Path

from . import nvrtc

CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
ARCH = 90


def _cu13():
    """site-packages/nvidia/cu13, where both wheels install (ImportError when neither is installed)."""
    import nvidia.cu13

    return Path(next(iter(nvidia.cu13.__path__)))


def nvdisasm_path():
    return _cu13() / "bin" / "nvdisasm"


def tools_reason():
    """None when NVRTC 13 and nvdisasm 13 are both here, else why not."""
    try:
        folder = _cu13()
    except ImportError as e:
        return f"the CUDA 13 wheels are not installed ({e}); pip install nvidia-cuda-nvrtc nvidia-cuda-nvdisasm"
    missing = [p for p in (folder / "lib" / "libnvrtc.so.13", folder / "bin" / "nvdisasm") if not p.exists()]
    if missing:
        return f"missing {', '.join(map(str, missing))}; pip install nvidia-cuda-nvrtc nvidia-cuda-nvdisasm"
    return None


def versions():
    """'NVRTC 13.x, nvdisasm 13.x' as the libraries report them."""
    lib = ctypes.CDLL(str(_cu13() / "lib" / "libnvrtc.so.13"))
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    out = subprocess.run([str(nvdisasm_path()), "--version"], capture_output=True, text=True, check=True).stdout
    release = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return f"NVRTC {major.value}.{minor.value}, nvdisasm {release.group(2) if release else out.strip()[-20:]}"


def compile_cubin(source, arch=ARCH, options=("--std=c++17",)):
    """(cubin, log) of ``source`` compiled as cupy compiles it with ``options``, ptxas's verbose report in the log."""
    return nvrtc.compile_cubin(source, arch, (*CUPY_OPTIONS, *options, "--ptxas-options=-v"), version=13)


def disassemble(cubin):
    """nvdisasm's text of ``cubin`` (SASS, one instruction per line)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([str(nvdisasm_path()), "-c", str(path)], capture_output=True, text=True, check=True)
    return done.stdout


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")


def instructions(sass):
    """[(offset, opcode, modifiers, line)] of every instruction in ``sass`` (predicate stripped)."""
    out = []
    for line in sass.splitlines():
        found = _INSTRUCTION.search(line)
        if found:
            out.append((int(found.group(1), 16), found.group(3), found.group(4), line.strip()))
    return out


def functions(sass):
    """{name: sass text of that function} for every function in the disassembly."""
    parts = re.split(r"\n\s*\.text\.([A-Za-z_][\w$.]*):", "\n" + sass)
    return {name: body for name, body in zip(parts[1::2], parts[2::2])}


def counts(sass):
    """{opcode: count} over ``sass``; generic loads/stores are LD/ST, shared LDS/STS, local LDL/STL."""
    out = {}
    for _, op, _, _ in instructions(sass):
        out[op] = out.get(op, 0) + 1
    return out


def _ptxas_info(log, kernel):
    """ptxas's -v lines for ``kernel``: registers, stack frame, spills, static shared memory."""
    block = log.split(f"Compiling entry function '{kernel}'", 1)
    text = block[1] if len(block) > 1 else log
    text = text.split("Compiling entry function", 1)[0]
    stack = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    registers = re.search(r"Used (\d+) registers", text)
    shared = re.search(r"(\d+) bytes smem", text)
    if not (stack and registers):
        raise RuntimeError(f"no ptxas report for {kernel} in the log:\n{log}")
    return {"registers": int(registers.group(1)), "stack": int(stack.group(1)), "spill_stores": int(stack.group(2)),
            "spill_loads": int(stack.group(3)), "shared": int(shared.group(1)) if shared else 0}


def report(source, arch=ARCH, options=("--std=c++17",)):
    """{kernel name: facts} for every kernel in ``source`` (see the module docstring)."""
    cubin, log = compile_cubin(source, arch, options)
    sass = disassemble(cubin)
    out = {}
    for kernel in re.findall(r"Compiling entry function '([\w$]+)'", log):
        body = functions(sass).get(kernel, "")
        out[kernel] = {**_ptxas_info(log, kernel), "counts": counts(body), "sass": body, "log": log}
    return out


def allocated_registers(registers, threads, granularity=256):
    """Registers a block of ``threads`` takes: per warp, registers × 32 rounded up to ``granularity``."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // granularity) * granularity
    return warps * per_warp


_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_TARGET = re.compile(r"`\(\.(L_x_\d+)\)")
MEMORY = ("LDS", "STS", "LDG", "STG", "LD", "ST", "LDL", "STL")  # opcodes counted with their width (LDS.128)


def _key(op, modifiers):
    """An opcode, with its width for memory operations (LDS.128, LDG.E.64 -> LDG.64)."""
    if op in MEMORY:
        width = [m for m in modifiers.split(".") if m in ("64", "128", "U8", "S8", "U16", "S16")]
        return op + (f".{width[0]}" if width else "")
    return op


def loops(sass):
    """Every loop of ``sass`` (a backward branch and the instructions from its target to it), innermost first.

    Each loop is a dict: start, end (offsets), counts ({opcode: n}, memory opcodes with their width),
    instructions (their number), innermost (no other loop inside it).
    """
    labels, pending = {}, []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        found = _INSTRUCTION.search(line)
        if found:
            for name in pending:
                labels[name] = int(found.group(1), 16)
            pending = []
    body = instructions(sass)
    out = []
    for offset, op, _, line in body:
        target = _TARGET.search(line) if op == "BRA" else None
        if target and labels.get(target.group(1), offset + 1) <= offset:
            start = labels[target.group(1)]
            counts = {}
            for at, o, modifiers, _ in body:
                if start <= at <= offset:
                    key = _key(o, modifiers)
                    counts[key] = counts.get(key, 0) + 1
            out.append({"start": start, "end": offset, "counts": counts, "instructions": sum(counts.values())})
    for loop in out:
        loop["innermost"] = not any(o is not loop and loop["start"] <= o["start"] and o["end"] <= loop["end"]
                                    and (o["start"], o["end"]) != (loop["start"], loop["end"]) for o in out)
    return sorted(out, key=lambda lp: (not lp["innermost"], lp["start"]))


def blocks(sass):
    """The basic blocks of ``sass`` in address order: a block starts at a label or after a branch and ends at a
    branch or before a label.  Each is a dict: label (its label, or the previous one's with '+'), start, end
    (offsets), counts ({opcode: n}, memory opcodes with their width), instructions (their number)."""
    out, current, label = [], [], "entry"

    def close():
        if current:
            counts = {}
            for _, op, modifiers in current:
                key = _key(op, modifiers)
                counts[key] = counts.get(key, 0) + 1
            out.append({"label": label, "start": current[0][0], "end": current[-1][0], "counts": counts,
                        "instructions": len(current)})

    for line in sass.splitlines():
        found_label = _LABEL.match(line)
        if found_label:
            close()
            current, label = [], found_label.group(1)
            continue
        found = _INSTRUCTION.search(line)
        if found:
            current.append((int(found.group(1), 16), found.group(3), found.group(4)))
            if found.group(3) in ("BRA", "EXIT", "RET"):
                close()
                current, label = [], label + "+"
    close()
    return out
