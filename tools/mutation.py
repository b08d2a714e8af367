"""Mutation testing of the core modules: plant one small, realistic bug at a time and check that the tests catch it.

    .venv/bin/python tools/mutation.py                 # a seeded sample of mutants per core module
    .venv/bin/python tools/mutation.py --per-module 8 --seed 1 --out mutation.json

Each mutant changes one operator or constant (a comparison, arithmetic, a boolean, an integer) in one of the core
modules below, in a copy of the repository, and runs the default tests that exercise that module (`MODULES`),
stopping at the first failure. A mutant the tests do not fail on "survives". Mutants listed in `EQUIVALENT`
cannot change behaviour; they are left out of the score, each with its reason. Prints a table and the score;
`--out` also writes the results as JSON. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path("src/webdino_seg")
# core module -> the default-run tests that exercise it, quickest first (pytest stops at the first failure)
MODULES = {
    "utils/metrics.py": ["test_metrics.py", "test_meaning.py"],
    "utils/overlay.py": ["test_meaning.py", "test_predict.py"],
    "models/heads.py": ["test_heads.py", "test_meaning.py", "test_model.py"],
    "models/weights/loading.py": ["test_weights.py", "test_backbone.py", "test_never_destroy.py"],
    "models/checkpoint.py": ["test_compat.py", "test_predict.py", "test_meaning.py"],
    "engine/features.py": ["test_runtime.py", "test_meaning.py", "test_never_destroy.py", "test_first_hour.py"],
    "engine/runfolder.py": ["test_meaning.py", "test_train.py", "test_first_hour.py"],
    "engine/train.py": ["test_meaning.py", "test_train.py", "test_first_hour.py"],
    "inference/evaluate.py": ["test_meaning.py", "test_first_hour.py", "test_formats.py"],
    "inference/predictor.py": ["test_predict.py", "test_heads.py", "test_layout.py"],
}
# where only some functions are logic to mutate: the legend and caption layout in overlay.py is drawing
# arithmetic (pixel paddings) that no test pins, left out rather than counted
FUNCTIONS = {"utils/overlay.py": ("palette", "_lut", "overlay")}
# "module:line:col:operator" -> why the mutant cannot change behaviour
EQUIVALENT: dict[str, str] = {
    "inference/evaluate.py:67:53:int": "the JSON report's indentation (2 or 3 spaces): the same content",
    "utils/overlay.py:35:19:int": "a colour table of 257 rows instead of 256: uint8 masks never index row 256",
    "models/weights/loading.py:76:37:bool": "strict=False after check_state_dict refused every missing, unexpected "
    "or mis-shaped key: nothing is left for strict to catch",
    "engine/train.py:361:102:bool": "zip(strict=False) over the two split names and the two datasets: always two of "
    "each",
}

SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


@dataclass
class Mutant:
    module: str
    line: int
    col: int
    operator: str
    code: str  # the source line, before
    status: str = "not run"  # caught, survived, equivalent, timeout
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.operator}"


def _skipped(tree: ast.Module) -> set[int]:
    """Nodes not worth mutating: module-level tables, docstrings, f-strings, annotations, raise statements."""
    skip: set[int] = set()
    for node in tree.body:  # module-level tables (palettes, names) are data, not logic
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.JoinedStr, ast.Raise)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        ):
            skip.update(id(n) for n in ast.walk(node))
        for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if annotation is not None:
                skip.update(id(n) for n in ast.walk(annotation))
    return skip


def sites(module: str, source: str) -> list[Mutant]:
    """Every place in `source` where one operator or constant can be changed."""
    tree = ast.parse(source)
    skip, lines, found = _skipped(tree), source.splitlines(), []
    if module in FUNCTIONS:  # only inside the named functions
        kept = {id(n) for f in tree.body if getattr(f, "name", None) in FUNCTIONS[module] for n in ast.walk(f)}
        skip |= {id(n) for n in ast.walk(tree)} - kept
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        ops = []
        if isinstance(node, ast.Compare):
            ops = [type(op).__name__ for op in node.ops[:1] if type(op) in SWAPS]
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
            ops = [type(node.op).__name__]
        elif isinstance(node, ast.Constant) and type(node.value) in (bool, int):
            ops = ["bool" if isinstance(node.value, bool) else "int"]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            ops = ["Not"]
        for op in ops:
            found.append(Mutant(module, node.lineno, node.col_offset, op, lines[node.lineno - 1].strip()))
    return found


class _Plant(ast.NodeTransformer):
    """Makes the one change a mutant names, at its line and column, on a node of the kind it names."""

    def __init__(self, mutant: Mutant) -> None:
        self.mutant, self.done = mutant, False

    def _here(self, node: ast.AST, kinds: tuple[type, ...]) -> bool:
        m = self.mutant
        return not self.done and isinstance(node, kinds) and (node.lineno, node.col_offset) == (m.line, m.col)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        node = self.generic_visit(node)
        if self.mutant.operator == "Not" and self._here(node, (ast.UnaryOp,)) and isinstance(node.op, ast.Not):
            self.done = True
            return node.operand  # `not x` becomes `x`
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        node = self.generic_visit(node)
        if self._here(node, (ast.Compare,)) and type(node.ops[0]).__name__ == self.mutant.operator:
            node.ops[0], self.done = SWAPS[type(node.ops[0])](), True
        return node

    def _swap_op(self, node: ast.AST) -> ast.AST:
        node = self.generic_visit(node)
        if self._here(node, (ast.BinOp, ast.BoolOp)) and type(node.op).__name__ == self.mutant.operator:
            node.op, self.done = SWAPS[type(node.op)](), True
        return node

    visit_BinOp = visit_BoolOp = _swap_op

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if self.mutant.operator in ("bool", "int") and self._here(node, (ast.Constant,)):
            node.value, self.done = (not node.value) if self.mutant.operator == "bool" else node.value + 1, True
        return node


def mutate(source: str, mutant: Mutant) -> str:
    """`source` with the one change `mutant` names."""
    plant = _Plant(mutant)
    tree = plant.visit(ast.parse(source))
    if not plant.done:
        raise ValueError(f"no site for {mutant.key}")
    return ast.unparse(ast.fix_missing_locations(tree))


def run_one(copy: Path, mutant: Mutant, timeout: float) -> None:
    """Plant `mutant` in the copy, run its tests, restore the module."""
    path = copy / PACKAGE / mutant.module
    original = path.read_text()
    path.write_text(mutate(original, mutant))
    tests = [str(copy / "tests" / t) for t in MODULES[mutant.module]]
    env = os.environ | {"PYTHONPATH": str(copy / "src")}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=copy,
            env=env,
            capture_output=True,
            timeout=timeout,
        )
        mutant.status = "caught" if done.returncode != 0 else "survived"
    except subprocess.TimeoutExpired:
        mutant.status = "timeout"  # counted as caught: the tests did not pass
    finally:
        path.write_text(original)
        mutant.seconds = time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-module", type=int, default=5, help="mutants drawn per core module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one mutant's tests may take")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        help="run just these mutants (module:line:col:operator, as printed), e.g. again after a test was added",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    mutants = []
    for module in MODULES:
        candidates = sites(module, (REPO / PACKAGE / module).read_text())
        if args.only:
            mutants += [m for m in candidates if m.key in args.only]
            continue
        mutants += sorted(rng.sample(candidates, min(args.per_module, len(candidates))), key=lambda m: m.line)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="webdino-seg-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "outputs", "__pycache__"))
        if (REPO.parent / "shared").exists():  # the tests that read ../shared/data find it beside the copy
            (copy.parent / "shared").symlink_to(REPO.parent / "shared")
        for i, mutant in enumerate(mutants, 1):
            if mutant.key in EQUIVALENT:
                mutant.status = "equivalent"
            else:
                run_one(copy, mutant, args.timeout)
            print(
                f"[{i}/{len(mutants)}] {mutant.status:<10} {mutant.seconds:6.1f}s {mutant.key}  {mutant.code[:70]}",
                flush=True,
            )
    counted = [m for m in mutants if m.status != "equivalent"]
    caught = sum(m.status in ("caught", "timeout") for m in counted)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\nmutation score: {caught} of {len(counted)} caught ({100 * caught / max(len(counted), 1):.0f}%), "
        f"{len(mutants) - len(counted)} equivalent left out, {minutes:.1f} min"
    )
    for m in counted:
        if m.status == "survived":
            print(f"  survived: {m.key}  {m.code}")
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(m) for m in mutants], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
