"""The structure docs/design.md promises, checked on the source: folders that are the layers, imports that go up the
layers without module-level cycles, methods that never see the loop, one place for range messages, and the design's
citations of Algorithm 2 present in the files it names."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "trajshift"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """trajshift modules imported by ``name`` (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:          # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("trajshift")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("trajshift"):
                continue
            found.add(mod)
            for a in node.names:                     # `from . import run_state` imports a module
                found.add(f"{mod}.{a.name}")
    return found


def _graph(top_level_only=True) -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for imp in _imports(name, path, top_level_only):
            # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
            parts = imp.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in mods}
        graph[name] = targets - {name}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_module_level_import_cycle():
    graph = _graph()
    # The check can fail: a graph with a cycle is found.
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    # A package's __init__ importing its own submodules is how packages work, not a cycle of layers.
    layered = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    assert _cycle(layered) is None


def test_no_method_module_imports_the_loop():
    graph = _graph(top_level_only=False)
    for name, deps in graph.items():
        if name.startswith("trajshift.methods"):
            assert not {"trajshift.training.loop", "trajshift.training.run_state", "trajshift.runs.experiment"} & deps, (name, deps)


def test_range_messages_are_written_in_one_place():
    pattern = re.compile(r"expected (an integer|a number|a finite number|integers) *(>|<|in )")
    hand_written = [(p.relative_to(PACKAGE).as_posix(), i + 1)
                    for p in PACKAGE.rglob("*.py") if p.name != "schema.py"
                    for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert len(hand_written) <= 2, hand_written


LAYERS = [          # docs/design.md's table: each layer is a folder of trajshift/ (math: one module of methods/)
    ("core", {"core"}),
    ("math", {"methods.rules"}),
    ("engine", {"engine", "models"}),
    ("methods", {"methods"}),
    ("training", {"training"}),
    ("data", {"data", "tasks"}),
    ("evaluation", {"evaluation"}),
    ("runs", {"runs"}),
    ("analysis", {"analysis"}),
    ("api", {"api"}),
    ("commands", {"commands", "__main__", ""}),
]


def test_the_folders_are_the_layers():
    """The package root holds only the package's entry points; every folder is (part of) one layer."""
    folders = {m for _, members in LAYERS for m in members if m and "." not in m and m not in ("__main__", "api")}
    root = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    entry_points = {"__init__.py", "__main__.py", "api.py"}
    assert root == folders | entry_points, root ^ (folders | entry_points)
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    for layer, members in LAYERS:
        for m in members - {"", "__main__"}:
            assert f"{m.replace('.', '/')}/" in text or f"{m.replace('.', '/')}.py" in text, (layer, m)


def _layer(module: str) -> int:
    name = module.removeprefix("trajshift").removeprefix(".")
    for i, (_, members) in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members if m) or (name == "" and "" in members):
            return i
    raise AssertionError(f"{module}: in no layer of docs/design.md")


def test_each_layer_imports_only_the_layers_above_it():
    """docs/design.md's table of layers, for every import, at module level or inside a function."""
    wrong = []
    for name, deps in _graph(top_level_only=False).items():
        if name == "trajshift":           # the package's __init__ re-exports the public API of every layer
            continue
        for dep in deps:
            if dep != "trajshift" and _layer(dep) > _layer(name) and not name.startswith(dep + "."):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert not wrong, wrong


def test_design_md_cites_code_that_exists_where_it_says():
    """The design's table of Algorithm 2's lines names the file and the statement (no line numbers: they go stale on
    harmless edits); each statement must be in that file."""
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    rows = re.findall(r"\| (trajshift/[\w/]+\.py) \| `([^`]+)` \|", text)
    assert len(rows) >= 8
    for path, code in rows:
        lines = [line.strip() for line in (PACKAGE.parent / path).read_text().splitlines()]
        assert any(line.startswith(code.strip()) for line in lines), (path, code)


def test_the_head_is_what_meta_params_leaves_out_everywhere():
    """With meta_params excluding the last conv block too, that block is per task (seeded per task like a head), is
    left out of init.pt, and is not loaded by the meta-test (the fresh model keeps its own weights there)."""
    import torch

    from trajshift.engine.module_learners import ModuleLearners
    from trajshift.engine.population import Population
    from trajshift.evaluation.meta_test import load_body
    from trajshift.models import build_model
    from trajshift.runs.experiment import build_models
    from trajshift.runs.train import init_state_dict

    spec, mp = {"name": "conv4", "width": 4}, {"include": ["*"], "exclude": ["fc.*", "body.12.*"]}
    models = build_models(spec, [3, 4], seed=0, meta_params=mp)
    assert torch.equal(models[0].body[0].weight, models[1].body[0].weight)         # the shared body
    assert not torch.equal(models[0].body[12].weight, models[1].body[12].weight)   # per task, like the head
    learners = ModuleLearners(models, lambda t, step, split: None, **mp)
    sd = init_state_dict(learners, Population(learners, {"name": "sgd", "lr": 0.1}).phi)
    assert not any(k.startswith(("fc.", "body.12.")) for k in sd) and "body.0.weight" in sd
    assert "body.13.running_mean" in sd                       # buffers belong to the body
    fresh = build_model(spec, 5)
    before = fresh.body[12].weight.detach().clone()
    shifted = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    shifted["body.12.weight"] = torch.zeros_like(before)       # a head entry in the file is never loaded
    load_body(fresh, shifted, "test", mp)
    assert torch.equal(fresh.body[12].weight, before)
    assert torch.equal(fresh.body[0].weight, sd["body.0.weight"] + 1)
