"""The public surface: API.md's names are exported and documented; ``__all__`` is exact.

- Every name API.md fixes is in ``ecrstream.__all__`` and has a docstring. API.md is read from
  ``$ECRSTREAM_API_MD``, else from ``shared/design/API.md`` beside an ancestor of this checkout
  (where the project's CI puts it), else from ``tests/API.md``, the copy the checkout carries
  so that a clone anywhere runs the same checks. Where the shared one is found, the copy must
  equal it (a test below), so the copy cannot drift from the contract.
- Per public module, both directions: everything it defines without a leading underscore is
  in its ``__all__``, and everything in its ``__all__`` exists and is documented where it is
  defined (a docstring; for a constant, a ``#:`` comment above it).
- ``import ecrstream`` (and ``ecrstream.errors``, ``ecrstream.lowlevel``) loads no aiobotocore,
  botocore or aiohttp.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

import ecrstream

API_MD_COPY = Path(__file__).resolve().parent / "API.md"


def _find_api_md() -> Path:
    override = os.environ.get("ECRSTREAM_API_MD")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for folder in here.parents:
        candidate = folder / "shared" / "design" / "API.md"
        if candidate.is_file():
            return candidate
    return API_MD_COPY


def test_the_checkouts_copy_of_api_md_is_the_contract() -> None:
    assert API_MD_COPY.read_text() == API_MD_TEXT, (
        f"tests/API.md differs from {_find_api_md()}: copy the contract over it"
    )


API_MD_TEXT = _find_api_md().read_text()
_SECOND_ROUND = "## Names added in the second round"
if _SECOND_ROUND not in API_MD_TEXT:  # the split below would silently check nothing of it
    raise ValueError(f"API.md has no section {_SECOND_ROUND!r}: update this test")
FIRST_ROUND, SECOND_ROUND = API_MD_TEXT.split(_SECOND_ROUND, 1)

_FENCE = re.compile(r"```.*?```", re.DOTALL)
_SPAN = re.compile(r"`([^`]+)`")
# In code: a class is called (`Name(`) or named alone (`Name`); a function takes the client.
_CALLED = re.compile(r"\b([A-Z][A-Za-z]+)\(")
_ALONE = re.compile(r"[A-Z][A-Za-z]+")
_FUNCTION = re.compile(r"\b([a-z][a-z]*_[a-z_]+)\(client\b")
_ATTRIBUTE = re.compile(r"\b([A-Z][A-Za-z]+)\.([a-z_][a-z_]*|[A-Z_]+)\b")
# Words API.md writes as code that are not names ("one subclass per code, named with `Error`").
_NOT_NAMES = frozenset({"Error"})


def _code(text: str) -> list[str]:
    return _FENCE.findall(text) + _SPAN.findall(_FENCE.sub("", text))


def _names(text: str) -> set[str]:
    found: set[str] = set()
    for code in _code(text):
        found |= set(_CALLED.findall(code)) | set(_FUNCTION.findall(code))
        if _ALONE.fullmatch(code.strip()):
            found.add(code.strip())
    return {name for name in found - _NOT_NAMES if not hasattr(builtins, name)}


def _attributes(text: str) -> set[tuple[str, str]]:
    return {pair for code in _code(text) for pair in _ATTRIBUTE.findall(code)}


def _has(cls: object, attribute: str) -> bool:
    annotations = inspect.get_annotations(cls) if isinstance(cls, type) else {}
    fields = getattr(cls, "__dataclass_fields__", {})
    return hasattr(cls, attribute) or attribute in annotations or attribute in fields


# The first round's names exist now; the second round's are "fixed once built".
FIXED = sorted(_names(FIRST_ROUND))
BUILT = sorted(n for n in _names(SECOND_ROUND) - set(FIXED) if n in dir(ecrstream))
FIXED_ATTRIBUTES = sorted(_attributes(FIRST_ROUND))
BUILT_ATTRIBUTES = sorted(
    (owner, attribute)
    for owner, attribute in _attributes(SECOND_ROUND) - set(FIXED_ATTRIBUTES)
    if _has(getattr(ecrstream, owner, None), attribute)
)


def test_api_md_names_enough() -> None:
    """The parse finds what API.md obviously fixes (guards the regular expressions)."""
    for name in ("EcrClient", "LayerUploader", "PushImageResult", "push_image", "ServerError"):
        assert name in FIXED
    assert len(FIXED) >= 39
    assert ("OperationCanceledError", "checkpoint") in FIXED_ATTRIBUTES


@pytest.mark.parametrize("name", FIXED + BUILT)
def test_fixed_name_is_exported_and_documented(name: str) -> None:
    assert name in ecrstream.__all__, f"{name} missing from ecrstream.__all__"
    assert inspect.getdoc(getattr(ecrstream, name)), f"{name} has no docstring"


@pytest.mark.parametrize(("owner", "attribute"), FIXED_ATTRIBUTES + BUILT_ATTRIBUTES)
def test_fixed_attribute_exists(owner: str, attribute: str) -> None:
    assert _has(getattr(ecrstream, owner), attribute), f"{owner}.{attribute} is missing"


def test_all_is_sorted_and_every_name_exists() -> None:
    assert sorted(ecrstream.__all__) == ecrstream.__all__
    assert set(ecrstream.__all__) <= set(dir(ecrstream))


def test_public_methods_are_documented() -> None:
    for name in ("CancellationToken", "CancellationTokenSource", "EcrClient", "LayerUploader"):
        cls = getattr(ecrstream, name)
        for attr, member in vars(cls).items():
            if attr.startswith("_"):
                continue
            target = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if callable(target) or isinstance(target, property):
                assert inspect.getdoc(target), f"{name}.{attr} has no docstring"


# -- per module: __all__ both ways --------------------------------------------------------------

# The modules of the library core. (cli, image and local keep their own export tests.)
PUBLIC_MODULES = (
    "ecrstream",
    "ecrstream.bandwidth",
    "ecrstream.body",
    "ecrstream.buffers",
    "ecrstream.client",
    "ecrstream.errors",
    "ecrstream.lowlevel",
    "ecrstream.models",
    "ecrstream.pipeline",
    "ecrstream.retry",
    "ecrstream.source",
    "ecrstream.upload",
    "ecrstream.uploader",
)
# Modules whose job is to re-export: what they import from ecrstream is what they define.
REEXPORTING = frozenset({"ecrstream", "ecrstream.lowlevel"})
# Module-level names that are public by convention without being API: the package logger.
NOT_API = frozenset({"logger"})


@cache
def _tree(module: ModuleType) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def _defined(module: ModuleType) -> dict[str, ast.stmt]:
    """Top-level names the module defines (or, re-exporting, imports from ecrstream)."""
    found: dict[str, ast.stmt] = {}
    for node in _tree(module).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
        elif (
            module.__name__ in REEXPORTING
            and isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("ecrstream")
        ):
            for alias in node.names:
                found[alias.asname or alias.name] = node
    return {name: node for name, node in found.items() if not name.startswith("_")}


def _definition(module: ModuleType, name: str) -> tuple[ModuleType, ast.stmt] | None:
    """Where ``name`` of ``module`` is defined, following imports from ecrstream modules."""
    statements = list(_tree(module).body)
    statements += [inner for node in statements if isinstance(node, ast.If) for inner in node.body]
    for node in statements:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ecrstream"):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _definition(importlib.import_module(node.module or ""), alias.name)
    for found, node in _defined(module).items():
        if found == name and not isinstance(node, ast.ImportFrom):
            return module, node
    return None


def _documented(module: ModuleType, name: str) -> bool:
    """True if ``name`` has a docstring where it is defined, or a ``#:`` comment above it."""
    definition = _definition(module, name)
    if definition is None:
        return False
    home, node = definition
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return bool(ast.get_docstring(node))
    lines = inspect.getsource(home).splitlines()
    return lines[node.lineno - 2].lstrip().startswith("#:")


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_everything_public_is_in_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = set(_defined(module)) - NOT_API
    if module_name == "ecrstream":
        public |= {"EcrClient", "LayerUploader", "push_image"}  # the lazy names
    assert sorted(public - set(module.__all__)) == [], f"public in {module_name} but not in __all__"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_everything_in_all_exists_and_is_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no docstring"
    assert len(set(module.__all__)) == len(module.__all__), "a name is listed twice"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [], f"in {module_name}.__all__ but not defined"
    undocumented = [name for name in module.__all__ if not _documented(module, name)]
    assert undocumented == [], f"undocumented in {module_name}"


# -- what importing costs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement", ["import ecrstream", "import ecrstream.errors", "import ecrstream.lowlevel"]
)
def test_import_loads_no_aws_or_http_library(statement: str) -> None:
    heavy = ("aiobotocore", "botocore", "aiohttp")
    code = f"import sys; {statement}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_import_ecrstream_loads_none_of_its_modules_nor_asyncio() -> None:
    """Issue 14's 0.15 s start-up: every public name is lazy, so the import is the package's
    ``__init__`` alone (asyncio by itself is ~50 ms here)."""
    code = (
        "import sys; import ecrstream;"
        " print(sorted(m for m in sys.modules if m.startswith('ecrstream.') or m == 'asyncio'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_a_lazy_name_loads_its_module_on_first_use() -> None:
    code = (
        "import sys, ecrstream; before = 'aiobotocore' in sys.modules;"
        " client = ecrstream.EcrClient; print(before, 'aiobotocore' in sys.modules,"
        " client.__module__, 'EcrClient' in dir(ecrstream))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert answer == ["False", "True", "ecrstream.client", "True"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        ecrstream.NoSuchName  # noqa: B018


@pytest.mark.parametrize("disabled_before", [False, True])
def test_a_lazy_import_leaves_the_garbage_collector_as_it_found_it(disabled_before: bool) -> None:
    # The lazy import pauses the collector while aiobotocore is imported, and only that long.
    code = (
        f"import gc, ecrstream; {'gc.disable(); ' if disabled_before else ''}"
        "ecrstream.EcrClient; print(gc.isenabled())"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert answer == [str(not disabled_before)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["upload-layer", "--help"],
        ["push", "--help"],
        ["copy", "--help"],
        ["local-ecr", "--help"],
        ["upload-layer", "layer.tar", "--repository", "r", "--part-size", "1"],  # a usage error
    ],
)
def test_the_command_line_answers_help_version_and_usage_errors_without_aws_libraries(
    argv: list[str],
) -> None:
    heavy = ("aiobotocore", "botocore", "aiohttp", "moto")
    code = (
        "import contextlib, io, sys\n"
        "from ecrstream.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        "    try:\n"
        f"        code = main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    usage_error = "--part-size" in argv
    assert done[0] == ("2" if usage_error else "0"), done
    assert done[1].strip() == "[]"
