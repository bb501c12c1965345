"""Single-line mutants of a Python module (through ``ast``) or of a CUDA C source (through its tokens).

A mutant is one small edit of one line: the kinds of mistake a test suite should notice.

    Python   arith     + ↔ -, * ↔ /, // → /, ** → *, % → //      (binary and augmented operators)
             augment   x += v → x = v (and every other op=)
             compare   < ↔ <=, > ↔ >=, == ↔ !=, in ↔ not in, is ↔ is not
             constant  an int n → n + 1, a float f → f + 1 (f = 0.5 → 1.5), True ↔ False
             boolean   and ↔ or, not x → x
             return    return x → return None
             delete    an expression statement, an assignment to an attribute or item, an augmented
                       assignment or a raise → pass
    CUDA C   the same operators on the tokens outside comments, strings and preprocessor lines, and a
             statement ending in ``;`` deleted (declarations and returns left alone).

Docstrings, strings (messages) and the constants inside f-strings are never mutated.  Each mutant has a
stable id, ``<file>:<hash>``, from the line's text before and after and its rank among identical edits,
so that the list of equivalent mutants (bench/mutation_equivalent.txt) survives edits elsewhere in the file.
"""

import ast
import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    path: str  # relative to the repository root
    line: int  # 1-based
    kind: str  # arith, augment, compare, constant, boolean, return, delete
    before: str  # the line, stripped
    after: str  # the mutated line, stripped
    id: str = ""

    def apply(self, text):
        """``text`` (the whole file) with this mutant's line replaced."""
        lines = text.splitlines(keepends=True)
        old = lines[self.line - 1]
        indent = old[:len(old) - len(old.lstrip())]
        end = "\n" if old.endswith("\n") else ""
        if old.strip() != self.before:
            raise ValueError(f"{self.path}:{self.line} is no longer {self.before!r}")
        lines[self.line - 1] = indent + self.after + end
        return "".join(lines)


ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
         ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
           ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _splice(line_bytes, start, end, new):
    return (line_bytes[:start] + new.encode() + line_bytes[end:]).decode()


def _docstrings(tree):
    """The Constant nodes that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
                found.add(id(first))
    return found


def _in_fstrings(tree):
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for n in ast.walk(node)}


def _node_edits(node):
    """(kind, replacement node) pairs for one expression node."""
    if isinstance(node, ast.BinOp) and type(node.op) in ARITH:
        yield "arith", ast.BinOp(node.left, ARITH[type(node.op)](), node.right)
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE:
                ops = list(node.ops)
                ops[i] = COMPARE[type(op)]()
                yield "compare", ast.Compare(node.left, ops, node.comparators)
    elif isinstance(node, ast.BoolOp):
        yield "boolean", ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "boolean", node.operand
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        value = node.value
        yield "constant", ast.Constant(not value if isinstance(value, bool) else value + 1)


def _statement_edits(node):
    if isinstance(node, ast.AugAssign):
        if type(node.op) in ARITH:
            yield "arith", ast.AugAssign(node.target, ARITH[type(node.op)](), node.value)
        yield "augment", ast.Assign([node.target], node.value, lineno=node.lineno)
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield "return", ast.Return(ast.Constant(None))
    bound = isinstance(node, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in node.targets)
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.Raise)) and not bound:
        yield "delete", ast.Pass()  # deleting ``name = ...`` only makes a NameError: left out


def python_mutants(path, text):
    """Every single-line mutant of the Python source ``text`` (the file at ``path``)."""
    tree = ast.parse(text)
    lines = text.splitlines()
    skip = _docstrings(tree) | _in_fstrings(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno") or node.lineno != node.end_lineno:
            continue
        edits = _statement_edits(node) if isinstance(node, ast.stmt) else _node_edits(node)
        line = lines[node.lineno - 1]
        raw = line.encode()
        for kind, new in edits:
            after = _splice(raw, node.col_offset, node.end_col_offset, ast.unparse(ast.fix_missing_locations(new)))
            if after.strip() != line.strip():
                found.append(Mutant(path, node.lineno, kind, line.strip(), after.strip()))
    return _with_ids(found)


# -- CUDA C ----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<comment>//[^\n]*|/\*.*?\*/) | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*') |
    (?P<number>(?<![\w.])(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)[fFuUlL]*(?![\w.])) |
    (?P<op>&&|\|\||<<=|>>=|<<|>>|<=|>=|==|!=|\+\+|--|->|\+=|-=|\*=|/=|[-+*/<>!]) |
    (?P<word>[A-Za-z_]\w*)
""", re.VERBOSE | re.DOTALL)
C_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*", "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
          "&&": "||", "||": "&&", "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*=", "++": "--", "--": "++"}
C_ARITH = {"+", "-", "*", "/", "+=", "-=", "*=", "/=", "++", "--"}
C_TYPES = {"int", "float", "double", "long", "unsigned", "size_t", "bool", "const", "auto", "char", "return",
           "extern", "struct", "template", "typedef", "using", "static", "__shared__", "__device__", "__global__",
           "for", "if", "while", "else", "int64_t", "int32_t", "uint32_t", "float4", "float2", "__restrict__"}


def _unary_or_pointer(text, start, op):
    """True where ``op`` at ``start`` is a unary sign or a pointer declarator/dereference, not a binary operator."""
    before = text[:start].rstrip()
    if op in "+-*" and (not before or before[-1] in "=(,[{;:?<>!&|+-*/%" or before.endswith("return")):
        return True
    if op == "*" and re.search(r"\b(?:" + "|".join(sorted(C_TYPES)) + r")\s*$", before):
        return True
    return op in ("<", ">") and bool(re.search(r"\b(?:template|static_cast|reinterpret_cast|const_cast)\s*$",
                                                before.split("<")[0] if op == "<" else before))


def cuda_mutants(path, text):
    """Every single-line mutant of the CUDA C source ``text``: operators and numbers swapped, statements deleted."""
    found = []
    lines = text.splitlines()
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line) + 1
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        for m in _TOKEN.finditer(line):
            kind = m.lastgroup
            token = m.group()
            new = None
            if kind == "op" and token in C_SWAP and not _unary_or_pointer(line, m.start(), token):
                new, what = C_SWAP[token], "arith" if token in C_ARITH else "compare"
                if token in ("&&", "||"):
                    what = "boolean"
            elif kind == "number":
                new, what = _bump(token), "constant"
            if new is not None:
                after = line[:m.start()] + new + line[m.end():]
                found.append(Mutant(path, number, what, stripped, after.strip()))
        if stripped.endswith(";") and not _declaration(stripped) and "{" not in stripped and "}" not in stripped:
            found.append(Mutant(path, number, "delete", stripped, ";  // deleted"))
    return _with_ids([m for m in found if not _in_comment_block(text, offsets[m.line - 1])])


def _bump(token):
    digits = token.rstrip("fFuUlL")
    suffix = token[len(digits):]
    if re.fullmatch(r"\d+", digits):
        return str(int(digits) + 1) + suffix
    return repr(float(digits) + 1.0) + suffix


def _declaration(stripped):
    first = re.match(r"[A-Za-z_]\w*", stripped)
    return bool(first) and (first.group() in C_TYPES or stripped.startswith(("__syncthreads", "asm")))


def _in_comment_block(text, offset):
    opened, closed = text.rfind("/*", 0, offset), text.rfind("*/", 0, offset)
    return opened > closed


def _with_ids(found):
    seen = {}
    out = []
    for m in found:
        key = (m.path, m.before, m.after)
        rank = seen[key] = seen.get(key, -1) + 1
        digest = hashlib.sha1(f"{m.before}\0{m.after}\0{rank}".encode()).hexdigest()[:10]
        out.append(Mutant(m.path, m.line, m.kind, m.before, m.after, f"{m.path}:{digest}"))
    return out


def mutants(path, text):
    """The mutants of the file at ``path`` (relative), by its suffix: .py or .cu."""
    return cuda_mutants(path, text) if path.endswith(".cu") else python_mutants(path, text)
