"""The package's layout is its architecture: packages by job, imports running one way (function-level ones
included), no circle, short functions, a small lazy public API, and a library that changes no global state."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import webdino_seg
from conftest import FIXTURES, TINY

SRC = Path(webdino_seg.__file__).parent
REPO = Path(__file__).parents[1]
TESTS = Path(__file__).parent
# what each package may import besides itself (and the leaf module _version)
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "data": {"utils"},
    "inference": {"utils", "models", "data"},
    "engine": {"utils", "models", "data"},
    "app": {"utils", "models", "data", "inference", "engine"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SRC.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every webdino_seg module `path` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("webdino_seg")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("webdino_seg"):
                continue
            subs = [f"{module}.{a.name}" for a in node.names if _is_module(f"{module}.{a.name}")]
            found |= set(subs) if subs else {module}
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_the_graph_sees_function_level_imports() -> None:
    """The checks below would miss nothing: a function-level relative import is found and resolved."""
    graph = _graph()
    assert "webdino_seg.inference.onnx" in graph["webdino_seg.inference.formats"]  # `from . import onnx` in a function
    assert "webdino_seg.engine.distributed" in graph["webdino_seg.engine.train"]  # `from . import distributed`
    assert len(graph) > 40


def test_packages_import_only_downward() -> None:
    upward = []
    for module, imported in _graph().items():
        parts = module.split(".")
        if len(parts) < 3:  # webdino_seg itself, __main__ and _version sit on top (or beside) everything
            continue
        for target in imported:
            other = target.split(".")
            if len(other) < 2 or other[1] == "_version" or other[1] == parts[1]:
                continue
            if other[1] not in ALLOWED[parts[1]]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_no_function_over_60_lines() -> None:
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long


def test_tests_do_not_import_each_other() -> None:
    for path in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith("test_")], f"{path.name} imports {names}"


# --- the public API ------------------------------------------------------------------------------

PUBLIC = {
    "create_backbone",
    "create_model",
    "list_variants",
    "DinoVisionTransformer",
    "DinoV3VisionTransformer",
    "SimpleDecoder",
    "Linear4",
    "MultiLayerDecoder",
    "GuidedDecoder",
    "Predictor",
    "load_model",
    "run_video",
    "train",
    "TrainConfig",
    "evaluate",
}


def test_public_api_holds_what_users_reach_for() -> None:
    assert set(webdino_seg.__all__) == set(webdino_seg._API) | {"__version__"}
    assert set(webdino_seg.__all__) >= PUBLIC
    for name in webdino_seg.__all__:
        value = getattr(webdino_seg, name)
        if callable(value) and name != "__version__":
            assert value.__module__.startswith("webdino_seg."), name
            assert value.__doc__, f"{name} has no docstring"
    assert webdino_seg.list_variants("dinov3")[0] == "dinov3-vits16"
    assert "webdino-300m" in webdino_seg.list_variants() and "webdino-300m" not in webdino_seg.list_variants("dinov3")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        webdino_seg.nope  # noqa: B018


def test_the_docs_python_example_runs_and_names_the_whole_api(tmp_path: Path, monkeypatch) -> None:
    section = (REPO / "docs" / "api.md").read_text().split("\n## Reference", 1)[0]
    missing = [name for name in webdino_seg.__all__ if name not in section]
    assert not missing, f"the Python API page does not mention {missing}"
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/api.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "clip_seg.mp4").stat().st_size > 0


def test_import_is_light() -> None:
    """`import webdino_seg` loads no torch (the public names are imported on first use)."""
    code = "import sys, webdino_seg; print(sorted(m for m in ('torch', 'numpy', 'cv2', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_every_module_imports() -> None:
    import importlib

    for path in SRC.rglob("*.py"):
        if path.name != "__main__.py":
            importlib.import_module(_module_name(path))


# --- no side effects -----------------------------------------------------------------------------


def _global_state() -> dict:
    import matplotlib

    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "matplotlib_backend": matplotlib.rcParams["backend"],
        "environ": dict(os.environ),
    }


def _model_state(model: torch.nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "dtypes": {p.dtype for p in model.parameters()},
        "devices": {p.device for p in model.parameters()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "values": [p.detach().clone() for p in model.state_dict().values()],
    }


def test_the_library_changes_no_global_state_and_not_the_callers_model(tmp_path: Path) -> None:
    import matplotlib

    from webdino_seg import Predictor, create_model, evaluate
    from webdino_seg.models.checkpoint import backbone_identity, save_model
    from webdino_seg.models.variants import IMAGENET_MEAN, IMAGENET_STD

    sample = Path(__file__).parents[1] / "examples" / "pennfudan-sample"
    previous_backend = matplotlib.rcParams["backend"]
    matplotlib.use("svg")  # a backend the library must leave alone (it used to switch to Agg)
    try:
        before = _global_state()
        model = create_model("webdino-300m", weights=FIXTURES / "tiny_official.pth", head="linear4", **TINY)
        model.train()  # the caller's model is training: BatchNorm in training mode
        mine = _model_state(model)
        predictor = Predictor(model, (56, 56), IMAGENET_MEAN, IMAGENET_STD, ["background", "person"])
        mask = predictor.predict(np.zeros((60, 70, 3), np.uint8))
        assert mask.shape == (60, 70)
        checkpoint = tmp_path / "model.pth"
        meta = {"imgsz": [56, 56], "class_names": ["background", "person"], "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        save_model(checkpoint, model, backbone_identity(model.backbone, str(FIXTURES / "tiny_official.pth"), 0), meta)
        evaluate(predictor, checkpoint, sample, log=lambda *_: None, report_dir=tmp_path / "report")
        after = _model_state(model)
        values, before_values = after.pop("values"), mine.pop("values")
        assert after == mine
        assert all(torch.equal(a, b) for a, b in zip(values, before_values, strict=True))
        assert _global_state() == before
    finally:
        matplotlib.use(previous_backend)


def test_a_seeded_backbone_leaves_the_global_random_stream_alone() -> None:
    from webdino_seg import create_backbone

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = create_backbone("webdino-tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream went on as if nothing had been built
    second = create_backbone("webdino-tiny", seed=0)
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # and the seed still gives the same backbone


def test_predictor_refuses_a_model_on_another_device() -> None:
    from webdino_seg import Predictor, create_model

    model = create_model("webdino-tiny")
    with pytest.raises(ValueError, match="the model is on cpu, not meta"):
        Predictor(model, (56, 56), (0, 0, 0), (1, 1, 1), ["a", "b"], device="meta")


def test_speed_flags_hold_for_a_block_only() -> None:
    from webdino_seg.utils.runtime import speed_flags

    before = _global_state()
    with speed_flags(torch.device("cuda")):  # the flags can be set without a GPU
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert _global_state() == before
    with pytest.raises(KeyError), speed_flags(torch.device("cuda")):
        raise KeyError("a failure inside the block")
    assert _global_state() == before
    with speed_flags(torch.device("cpu")):
        assert _global_state() == before
