"""The package's layers run one way (docs/layout.md): load → layers → extract → vectors →
steer → generate, research and evaluation beside the core, the CLI on top. Read from the
source (every ``import`` that runs, at module level or inside a function; imports for type
checkers only are not edges), so a reviewer's grep is a test."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

import emovec

ROOT = Path(emovec.__file__).parent


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in ROOT.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _edges(source: str, package: str) -> set[str]:
    """What a module of ``package`` imports when it runs (``from emovec import _scope``
    imports a module, ``from x import f`` imports x; imports for type checkers only are
    skipped)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """The emovec modules ``module`` imports when it runs."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = _edges(path.read_text(encoding="utf-8"), package)
    return frozenset(m for m in found if m in MODULES and m != module)


def reached(start: str) -> set[str]:
    """Every module ``start`` imports, directly or not. The package ``emovec`` itself (its
    ``__init__`` re-exports the public API) is not followed: a module that needs the API's
    surface imports the module that defines it."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for module in imports(todo.pop()) - seen:
            seen.add(module)
            if module != "emovec":
                todo.append(module)
    return seen


def test_the_import_graph_is_read() -> None:
    assert "emovec._chat" in imports("emovec._texts")
    assert "emovec._scope" in imports("emovec.hooks")  # from emovec import _scope
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from emovec.vectors import EmotionVectors\n"
        "def f():\n"
        "    from .hooks import Steering\n"
    )
    assert _edges(source, "emovec") == {"typing", "emovec.hooks"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_the_package_surface(module: str) -> None:
    """A module inside emovec imports the module that defines what it needs, never the
    package's re-exports (which would make every layer depend on every other)."""
    assert "emovec" not in imports(module) or module == "emovec.__main__"


@pytest.mark.parametrize(
    ("start", "never"),
    [
        # Extraction reads hidden states; it neither steers nor generates.
        ("emovec.extraction", {"emovec.generation", "emovec.guidance", "emovec.steering"}),
        ("emovec.extraction", {"emovec.chat"}),
        ("emovec.extraction", {"emovec.hooks"}),
        # The file format and its recipe know nothing of how they are applied.
        ("emovec.vectors", {"emovec.hooks", "emovec.steering", "emovec.generation"}),
        ("emovec._format", {"emovec.hooks", "emovec.vectors"}),
        ("emovec._placement", {"emovec.hooks", "emovec.steering"}),
        # The hooks, guidance and generation work on an applied Steering, never on steer,
        # which sits above them: with a tokenizer it hands its hooks to chat's one call.
        ("emovec.hooks", {"emovec.steering", "emovec.guidance", "emovec.generation"}),
        ("emovec.guidance", {"emovec.steering", "emovec.generation", "emovec.chat"}),
        ("emovec.generation", {"emovec.steering", "emovec.chat"}),
        ("emovec.chat", {"emovec.steering"}),
    ],
)
def test_layers_run_one_way(start: str, never: set[str]) -> None:
    assert not reached(start) & never


@pytest.mark.parametrize(
    "core",
    [
        *("emovec.extraction", "emovec.vectors", "emovec.steering", "emovec.generation"),
        "emovec.chat",
        *("emovec.training", "emovec.models", "emovec.layers"),
    ],
)
def test_the_core_never_imports_research_evaluation_or_the_cli(core: str) -> None:
    above = {m for m in reached(core) if m.startswith(("emovec.analysis", "emovec.evaluation"))}
    above |= {m for m in reached(core) if m.startswith("emovec.server")}
    on_top = {"emovec.cli", "emovec.responses", "emovec.empathy", "emovec.control_vectors"}
    above |= {m for m in reached(core) if m in on_top}
    above |= {m for m in reached(core) if m.startswith("emovec._cli")}
    assert not above


def test_no_import_circle() -> None:
    for module in MODULES:
        assert module not in reached(module), module


def test_no_deprecated_alias_is_left() -> None:
    """The version was never released: an old name is removed, not kept with a warning."""
    warned = [name for name, path in MODULES.items() if "DeprecationWarning" in path.read_text()]
    assert not warned


# Names the unreleased version used and renamed (#23): none may come back as an alias.
RENAMED = (
    "find_layers",  # find_blocks: it returns modules
    "LayerDiscoveryError",  # BlockDiscoveryError
    "block_layers",  # blocks=
    "success_margin",  # Tolerance's bars
    "emotional_answers",  # the one call: steer(..., tokenizer=tok).answer
    "emotional_prompt",  # SteeredChat.messages
    "emotional_guidance",  # SteeredChat.generate_kwargs
    "with_instructions",  # chat.Asking
)


@pytest.mark.parametrize("name", RENAMED)
def test_a_renamed_name_is_gone(name: str) -> None:
    pattern = re.compile(rf"\b{name}\b")
    assert not [module for module, path in MODULES.items() if pattern.search(path.read_text())]
