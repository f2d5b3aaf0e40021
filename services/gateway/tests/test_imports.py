"""Import rules of the gateway package (issue 17), checked over the source's import statements.

- `policy/` decides from facts only: it imports neither `archive/` nor `store/`;
- archive products are named only by their adapters (`archive/orthanc.py`, `archive/dicomweb.py`
  and the modules an adapter is built from): no other module imports anything whose module or
  name spells a product;
- routes reach the application's services only through `Services` (`services_of`): the only
  attribute any module reads or writes on `app.state` is `services`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dicomweb_gateway"
PRODUCTS = ("orthanc", "dcm4che")
ADAPTERS = {"archive/orthanc.py", "archive/dicomweb.py"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _imports(relative: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(absolute module inside the package, imported names) of every import statement."""
    package = ["dicomweb_gateway", *relative.removesuffix(".py").split("/")[:-1]]
    if relative.endswith("__init__.py"):
        package = ["dicomweb_gateway", *relative.split("/")[:-1]]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
    return out


def _within(module: str, names: list[str], package: str) -> bool:
    full = [module, *(f"{module}.{n}" for n in names)]
    return any(m == package or m.startswith(package + ".") for m in full)


@pytest.mark.parametrize(("relative", "tree"), _modules(), ids=lambda v: getattr(v, "name", v))
def test_policy_imports_neither_archive_nor_store(relative: str, tree: ast.Module) -> None:
    if not relative.startswith("policy/"):
        return
    for module, names in _imports(relative, tree):
        for forbidden in ("dicomweb_gateway.archive", "dicomweb_gateway.store"):
            assert not _within(module, names, forbidden), f"{relative} imports {module} {names}"


@pytest.mark.parametrize(("relative", "tree"), _modules(), ids=lambda v: getattr(v, "name", v))
def test_only_adapters_import_a_product(relative: str, tree: ast.Module) -> None:
    if relative in ADAPTERS:
        return
    for module, names in _imports(relative, tree):
        spelled = " ".join([module, *names]).lower()
        assert not any(p in spelled for p in PRODUCTS), f"{relative} imports {module} {names}"


@pytest.mark.parametrize(("relative", "tree"), _modules(), ids=lambda v: getattr(v, "name", v))
def test_services_only_through_services(relative: str, tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "state"
        ):
            assert node.attr == "services", f"{relative}:{node.lineno} uses .state.{node.attr}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
            args = node.args
            if (
                len(args) >= 2
                and isinstance(args[1], ast.Constant)
                and isinstance(args[0], ast.Call)
                and getattr(args[0].func, "id", None) == "getattr"
                and isinstance(args[0].args[1], ast.Constant)
                and args[0].args[1].value == "state"
            ):
                assert args[1].value == "services", (
                    f"{relative}:{node.lineno} state.{args[1].value}"
                )


def test_the_rules_see_the_package() -> None:
    """The walk finds the adapters and the policy package (a moved tree fails here, loudly)."""
    found = {relative for relative, _ in _modules()}
    assert found >= ADAPTERS and "policy/decide.py" in found and "services.py" in found


def test_rules_live_in_one_place() -> None:
    """One UID grammar, one list of API prefixes, one list of supported scopes (issue 17)."""
    from dicomweb_gateway import admin, app, edge, http, parse, viewer
    from dicomweb_gateway.policy import scopes
    from dicomweb_gateway.policy.criteria import scope

    assert admin.valid_uid is parse.is_uid
    assert admin.valid_uid("0") and not admin.valid_uid("01.2")
    assert edge.API_PREFIXES is http.API_PREFIXES
    assert viewer.API_PREFIXES == http.API_PREFIXES + http.SERVICE_ROUTES
    assert list(scopes.OPERATION_SCOPES) == app.SCOPES_SUPPORTED
    assert scope.GRANTING_SCOPES is scopes.GRANTING_SCOPES


@pytest.mark.parametrize(("relative", "tree"), _modules(), ids=lambda v: getattr(v, "name", v))
def test_routes_run_the_pipeline(relative: str, tree: ast.Module) -> None:
    """No route stitches the order together itself: only pipeline.py calls `guarded`, and
    `authenticate` and the audit preflight are called by the pipeline (or by the DIMSE door and
    the data plane's decision, which answer no HTTP route of their own)."""
    if relative == "pipeline.py":
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            assert name != "guarded", f"{relative}:{node.lineno} calls guarded(); use run()"
            if name == "preflight":
                assert relative in ("dimse.py", "dataplane.py", "app.py"), (
                    f"{relative}:{node.lineno} runs the audit preflight itself"
                )
