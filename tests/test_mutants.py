"""bench.mutants: the mutation runner's edits are single-line, valid, stable, and leave messages alone."""

import ast

import pytest

from bench.mutants import Mutant, cuda_mutants, python_mutants
from bench.mutation import MODULES, ROOT, read_equivalent

PY = '''"""Docstring: x + 1 is not code."""


def f(a, b):
    """Also a docstring: 2 * 3."""
    if a < b and not a:
        raise ValueError(f"a must be below {b + 1}")
    total = a + b * 2.5
    total += 1
    a.out[0] = total
    return total
'''


def test_python_mutants_are_single_line_valid_and_leave_strings_alone():
    found = python_mutants("m.py", PY)
    after = {m.after for m in found}
    assert {"if a <= b and not a:", "if a < b or not a:", "if a < b and a:", "total = a - b * 2.5",
            "total = a + b / 2.5", "total = a + b * 3.5", "total -= 1", "total = 1", "total += 2", "pass",
            "return None"} <= after
    assert len([m for m in found if m.after == "pass"]) == 3  # raise, +=, item assignment: not `total = ...`
    lines = PY.splitlines()
    for m in found:
        mutated = m.apply(PY)
        ast.parse(mutated)
        changed = [i for i, (x, y) in enumerate(zip(lines, mutated.splitlines())) if x != y]
        assert changed == [m.line - 1], m
        assert '"""' not in m.before and "{b + 1}" not in m.after.replace(m.before, "")
    assert not [m for m in found if m.line in (1, 5, 7) and m.kind != "delete"]  # docstrings, the f-string


def test_ids_survive_edits_elsewhere_in_the_file():
    before = {m.id: m.after for m in python_mutants("m.py", PY)}
    moved = python_mutants("m.py", PY.replace("def f(a, b):", "X = 1\n\n\ndef f(a, b):"))
    assert {m.id: m.after for m in moved if m.after in before.values() and m.line > 4} .items() <= before.items()
    assert len(before) == len({m.id for m in python_mutants("m.py", PY)})


def test_a_mutant_refuses_a_line_that_changed():
    m = Mutant("m.py", 9, "augment", "total += 1", "total = 1", "m.py:x")
    with pytest.raises(ValueError, match="no longer"):
        m.apply(PY.replace("total += 1", "total += 2"))


CU = """#define N 4  // not mutated
/* a comment: a + b */
__device__ float f(const float* x, int n) {
    float s = -x[0];  // unary minus, pointer star: left alone
    for (int i = 0; i < n; i++) s += x[i] * 2.0f;
    if (n > 1 && s != 0) g(s);
    return s / n;
}
"""


def test_cuda_mutants_swap_binary_operators_and_numbers_only():
    found = cuda_mutants("k.cu", CU)
    after = {m.after for m in found}
    assert {"for (int i = 1; i < n; i++) s += x[i] * 2.0f;", "for (int i = 0; i <= n; i++) s += x[i] * 2.0f;",
            "for (int i = 0; i < n; i--) s += x[i] * 2.0f;", "for (int i = 0; i < n; i++) s -= x[i] * 2.0f;",
            "for (int i = 0; i < n; i++) s += x[i] / 2.0f;", "for (int i = 0; i < n; i++) s += x[i] * 3.0f;",
            "if (n >= 1 && s != 0) g(s);", "if (n > 1 || s != 0) g(s);", "if (n > 1 && s == 0) g(s);",
            "return s * n;"} <= after
    assert not [m for m in found if m.line in (1, 2, 3)]  # preprocessor, comment, the declaration's pointer
    assert not [m for m in found if m.line == 4 and m.kind != "constant"]  # -x[0] is unary; the comment's words
    assert all(m.apply(CU).count("\n") == CU.count("\n") for m in found)


def test_every_mapped_file_and_test_exists_and_equivalents_name_their_reason():
    for files, tests in MODULES.values():
        assert all((ROOT / f).is_file() for f in files) and all((ROOT / t).is_file() for t in tests)
    assert all(why for why in read_equivalent().values())
