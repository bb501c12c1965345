"""ElementwiseKernel bodies (fastnn.engines.cuda_elementwise) outside cupy: as C++ built with g++ and
called on numpy arrays, and as CUDA C wrapped in a __global__ function for NVRTC.

cupy's ElementwiseKernel runs ``body`` once per element i with every parameter named as a scalar
(inputs broadcast to the outputs' shape, outputs read and written); both wrappers here do the same.
"""

import ctypes

import numpy as np

from . import build

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def parse(params):
    """"T s, T keep" -> ["s", "keep"] (every parameter here is of the kernel's type T)."""
    names = []
    for part in params.split(","):
        kind, name = part.split()
        assert kind == "T", f"only T parameters are supported here; got {part!r}"
        names.append(name)
    return names


def _loop(name, inputs, outputs, body, ctype):
    params = parse(inputs) + parse(outputs)
    args = ", ".join(f"T* {p}_" for p in params)
    load = " ".join(f"T {p} = {p}_[i];" for p in params)
    store = " ".join(f"{p}_[i] = {p};" for p in parse(outputs))
    return f"typedef {ctype} T;", args, f"{{ {load} {body} {store} }}"


def cpp_source(specs):
    """One C++ file with every kernel for float and double, named NAME_float / NAME_double."""
    lines = ["#include \"shim.h\""]
    for name, inputs, outputs, body in specs:
        for ctype in CTYPES.values():
            typedef, args, step = _loop(name, inputs, outputs, body, ctype)
            lines.append(f"namespace {name}_{ctype} {{ {typedef}")
            lines.append(f"extern \"C\" void {name}_{ctype}(long n, {args}) {{ for (long i = 0; i < n; i++) {step} }}")
            lines.append("}")
    return "\n".join(lines) + "\n"


def cuda_source(specs, ctype):
    """CUDA C with one __global__ function per kernel over n elements, for NVRTC."""
    lines = [f"typedef {ctype} T;"]
    for name, inputs, outputs, body in specs:
        _, args, step = _loop(name, inputs, outputs, body, ctype)
        lines.append(f"extern \"C\" __global__ void {name}(long n, {args}) {{")
        lines.append(f"  long i = (long)blockIdx.x * blockDim.x + threadIdx.x; if (i < n) {step}\n}}")
    return "\n".join(lines) + "\n"


class CpuKernels:
    """``make`` for cuda_elementwise.Kernels: each kernel a g++ build of its body, called on numpy arrays."""

    def __init__(self, specs, out_dir):
        source = out_dir / "elementwise.cpp"
        source.write_text(cpp_source(specs))
        self.lib = build(source, out_dir, "elementwise")

    def __call__(self, inputs, outputs, body, name):
        n_in, n_out = len(parse(inputs)), len(parse(outputs))
        lib = self.lib

        def run(*args):
            assert len(args) == n_in + n_out, (name, len(args))
            outs = args[n_in:]
            dtype, shape = outs[0].dtype, outs[0].shape
            ins = [np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype), shape)) for a in args[:n_in]]
            work = [o if o.flags.c_contiguous else np.ascontiguousarray(o) for o in outs]
            assert all(o.dtype == dtype and o.shape == shape for o in outs), name
            ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in ins + work]
            fn = getattr(lib, f"{name}_{CTYPES[dtype]}")
            fn.restype = None
            fn(ctypes.c_long(int(np.prod(shape))), *ptrs)
            for o, w in zip(outs, work):
                if o is not w:
                    o[...] = w

        return run
