"""The house, drawn from its imports: floors that only look down, a short model file, short functions.

``FLOORS`` is the architecture in one table: a module may import (at the top or inside a
function, lazily) only modules on lower floors, so there is no import circle and nothing
points back up. A new module must be given a floor here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "nanogpt"

FLOORS = {
    # leaves: facts, configuration, tokenizers, file formats; no model
    "errors": 0, "cpu": 0, "textfont": 0,
    "config": 1, "tokenizer": 1, "data.format": 1, "fsutil": 1,
    "hf_modern": 2, "threads": 2, "native": 2, "bpe": 2, "nanogpt_format": 2, "optim": 2, "budget": 2, "data.corpora": 2, "data.loader": 2,
    "hf": 3, "hf_tokenizer": 3, "gguf_export": 3, "report": 3,
    # the teaching core, then what the runtime applies to it from outside
    "model": 4, "resolve": 4,
    "ops": 5, "flops": 5, "scoring": 5,
    "device": 6, "checkpoint": 6, "data.preparation": 6,
    "generate": 7, "runlog": 7, "step": 7, "runsetup": 7, "attention_maps": 7, "data": 7,
    # libraries behind the commands
    "trainer": 8, "evaluate": 8, "explain": 8,
    # the commands and the registry
    "train": 9, "sample": 9, "prepare": 9, "bench": 9, "export": 9, "plot": 9,
    # the server: its library over generate/explain/attention_maps, the app, the command
    "serve": 9, "serve.engine": 9, "serve.views": 9, "serve.api": 10, "serve.command": 11,
    "__init__": 12,
    "cli": 13, "__main__": 14,
}
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 600
LONG_FILES: dict[str, str] = {}  # module -> why it may be longer than MAX_FILE_LINES


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def nanogpt_imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, lazily or not (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if not name.startswith("nanogpt"):
                continue
            mod = name[len("nanogpt."):] if name != "nanogpt" else "__init__"
            while mod and mod not in known:  # "data.loader.BatchLoader" -> "data.loader"
                mod = mod.rpartition(".")[0]
            if mod:
                found.add(mod)
                break  # the longest name that is a module; the rest are its parents or attributes
    return found


def test_every_module_has_a_floor():
    assert set(modules()) - set(FLOORS) == set(), "give the new module a floor in FLOORS"


def test_imports_only_look_down():
    mods = modules()
    wrong = []
    for name, path in mods.items():
        for target in nanogpt_imports(path, set(mods)):
            if target != name and FLOORS[target] >= FLOORS[name]:
                wrong.append(f"{name} (floor {FLOORS[name]}) imports {target} (floor {FLOORS[target]})")
    assert wrong == []


def test_the_model_imports_only_its_config_and_the_weight_format():
    # nanogpt.hf is imported lazily by GPT.from_pretrained/save_pretrained; hf never imports the model
    assert nanogpt_imports(PACKAGE / "model.py", set(modules())) <= {"config", "hf"}
    assert "model" not in nanogpt_imports(PACKAGE / "hf.py", set(modules()))


def test_model_py_reads_in_one_sitting():
    text = (PACKAGE / "model.py").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    for word in ("cuda", "autocast", "bfloat16", "float16", "torch.compile", "get_num_threads"):
        assert word not in text, f"model.py mentions {word}: device and dtype choices belong to nanogpt.device"


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_short_and_files_are_not_long(name):
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    if name not in LONG_FILES:
        assert len(text.splitlines()) <= MAX_FILE_LINES, f"{name} has {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
