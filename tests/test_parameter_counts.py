"""Issue 21, point 1: no library function keeps more than 8 parameters.

A parameter is a positional(-only) or keyword-only one; ``*args``, ``**kwargs`` and a method's
first ``self`` / ``cls`` are not counted. Functions with more group what belongs together into a
small frozen settings object (``EncoderSettings``, ``ScoreOptions``, ``PolicyGrid``, ...) or take
an object the caller already has instead of its fields. The scan reads the source (``ast``), so
nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("oirl_fast", "train", "collect", "kernels")  # train/, collect/, kernels/ install as oirl_fast.*
LIMIT = 8

# Decorators (their last name: ``njit``, ``numba.njit(...)``, ``cuda.jit``) that hand a function to numba.
NUMBA_DECORATORS = {"njit", "jit", "intrinsic", "vectorize", "guvectorize", "stencil", "cfunc"}

# Whole kinds of functions exempt by design, each with its reason.
EXEMPT_KINDS = {
    "typer command": "a `*_cmd` function in oirl_fast/cli*.py declares one parameter per command-line option "
                     "(typer reads the options from the signature); it passes them on to library calls at once",
    "numba kernel": "compiled by numba (decorated with njit / cuda.jit / intrinsic, or wrapped as njit(...)(f)): "
                    "a compiled loop takes flat arrays and scalars, since nopython code cannot unpack a "
                    "Python settings object, and bundling them per call would cost time on the hot path",
}

# Single functions exempt by design: (file, qualified name) -> reason.
EXEMPT = {
    ("oirl_fast/api.py", "fit"): "the public `oirl.fit` mirrors `oirl train`'s options one for one "
                                 "(keyword-only), so the Python API and the CLI read the same",
    ("oirl_fast/reranking/run.py", "rerank"): "the public `oirl.rerank` mirrors `oirl rerank`'s options one for "
                                              "one (keyword-only), so the Python API and the CLI read the same",
}

# Functions still over the limit whose refactoring is scheduled elsewhere: (file, qualified name) -> why.
# Empty: the reranking functions once listed here take a FoldPlan / the Units now.
PENDING: dict = {}


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int:
    """Positional(-only) and keyword-only parameters of ``fn``; a method's first ``self`` / ``cls`` is not counted."""
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def _last_name(node: ast.expr) -> str | None:
    """``njit`` for ``njit``, ``numba.njit``, ``njit(cache=True)`` or ``cuda.jit(...)``'s ``jit``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _wrapped_by_numba(tree: ast.Module) -> set[str]:
    """Names of functions compiled as ``njit(f)`` or ``njit(...)(f)`` (``jit``, ...) somewhere in the module."""
    out = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and _last_name(node.func) in NUMBA_DECORATORS and node.args
                and isinstance(node.args[0], ast.Name)):
            out.add(node.args[0].id)
    return out


def functions(source: str, path: str) -> list[dict]:
    """Every function and method in ``source`` (nested ones too): file, qualified name, line, parameter
    count and the kind it is exempt as (None: not exempt by kind)."""
    tree = ast.parse(source)
    compiled = _wrapped_by_numba(tree)
    found = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = None
                if Path(path).parent.as_posix() == "oirl_fast" and Path(path).name.startswith("cli") \
                        and child.name.endswith("_cmd"):
                    kind = "typer command"
                elif child.name in compiled or any(_last_name(d) in NUMBA_DECORATORS for d in child.decorator_list):
                    kind = "numba kernel"
                found.append({"file": path, "name": f"{prefix}{child.name}", "line": child.lineno,
                              "count": parameter_count(child, in_class), "kind": kind})
                visit(child, f"{prefix}{child.name}.", False)
            else:
                visit(child, prefix, in_class)

    visit(tree, "", False)
    return found


def scan() -> list[dict]:
    out = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            out.extend(functions(file.read_text(encoding="utf-8"), rel))
    return out


def test_no_library_function_keeps_more_than_8_parameters():
    over = [f for f in scan() if f["count"] > LIMIT and f["kind"] is None
            and (f["file"], f["name"]) not in EXEMPT and (f["file"], f["name"]) not in PENDING]
    assert not over, "more than 8 parameters (group them into a frozen settings dataclass, or pass the object " \
                     "the caller has):\n" + "\n".join(f"  {f['file']}:{f['line']} {f['name']} ({f['count']})"
                                                      for f in over)


def test_every_listed_exemption_is_still_needed():
    """An entry of EXEMPT or PENDING whose function is gone or now within the limit is stale: remove it."""
    by_key = {(f["file"], f["name"]): f for f in scan()}
    stale = [f"{file} {name}: " + ("not found" if (file, name) not in by_key else
                                   f"{by_key[file, name]['count']} parameters, within the limit")
             for file, name in [*EXEMPT, *PENDING]
             if (file, name) not in by_key or by_key[file, name]["count"] <= LIMIT]
    assert not stale, "remove from EXEMPT / PENDING:\n" + "\n".join(stale)
    assert not set(EXEMPT) & set(PENDING)


def test_exempt_kinds_cover_what_they_say():
    """The kinds match CLI commands and numba kernels only, and the scan finds the ones we know of."""
    kinds = {(f["file"], f["name"]): f["kind"] for f in scan()}
    assert kinds["oirl_fast/cli_score.py", "register.score_cmd"] == "typer command"  # made inside register(app)
    assert kinds["oirl_fast/cli.py", "train_cmd"] == "typer command"
    assert kinds["oirl_fast/encoders/words.py", "_sum_texts"] == "numba kernel"  # @njit(cache=True, nogil=True)
    assert kinds["oirl_fast/encoders/static.py", "_sum_rows_py"] == "numba kernel"  # njit(...)(_sum_rows_py)
    assert kinds["kernels/quickscorer.py", "_tree_mask_block"] == "numba kernel"  # @intrinsic
    assert kinds["oirl_fast/cli_common.py", "make_embedder"] is None  # a helper in a CLI module, not a command
    assert kinds["oirl_fast/encoders/words.py", "sum_texts"] is None  # the Python wrapper around the kernel
    assert set(kinds.values()) <= {None, *EXEMPT_KINDS}


def test_the_count_on_small_cases():
    src = '''
from numba import njit, cuda

def plain(a, b, /, c, *args, d, e=1, **kwargs): pass

class C:
    def method(self, a, b): pass
    @classmethod
    def build(cls, a): pass
    @staticmethod
    def free(self_like, a): pass

@njit(cache=True)
def kernel(a, b, c, d, e, f, g, h, i): pass

@cuda.jit
def gpu(a, b, c, d, e, f, g, h, i): pass

def later(a, b, c, d, e, f, g, h, i): pass

def other(a, b, c, d, e, f, g, h, i): pass

def outer():
    def inner(a, b, c, d, e, f, g, h, i): pass
    return njit(cache=True)(later), print(other)
'''
    found = {f["name"]: f for f in functions(src, "oirl_fast/example.py")}
    assert found["plain"]["count"] == 5  # a, b (positional-only), c, d, e; *args and **kwargs not counted
    assert found["C.method"]["count"] == 2 and found["C.build"]["count"] == 1
    assert found["C.free"]["count"] == 2  # a static method's first parameter is no self (not named so)
    assert found["kernel"]["kind"] == found["gpu"]["kind"] == "numba kernel"
    assert found["later"]["kind"] == "numba kernel"  # compiled as njit(cache=True)(later)
    # passed to another call, or nested in a function: counted like any function
    assert found["other"]["kind"] is None
    assert found["outer.inner"]["count"] == 9 and found["outer.inner"]["kind"] is None
    assert functions("def score_cmd(a, b, c, d, e, f, g, h, i): pass", "oirl_fast/cli_x.py")[0]["kind"] == "typer command"
    assert functions("def score_cmd(a, b, c, d, e, f, g, h, i): pass", "oirl_fast/scoring/cli_x.py")[0]["kind"] is None
