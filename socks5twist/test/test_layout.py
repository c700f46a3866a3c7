"""
The package's layout: no module imports, at run time, one that imports it
back (type-only imports under C{if TYPE_CHECKING:} aside), so each module
can be read, and loaded, after the ones it uses; and the sans-I/O modules
(the wire format, the negotiation, the rules) load no Twisted at all, so
they can be read and tested without a reactor.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import socks5twist

PACKAGE = Path(socks5twist.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package but its tests."""
    return {
        module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "test" not in path.relative_to(PACKAGE).parts[:-1]
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """
    The package's modules that C{name} imports as it loads: its module-level
    imports (in any C{if}/C{try} but C{if TYPE_CHECKING:}), not those inside
    functions, which run later.
    """
    return {m for m in module_imports(name, path, known) if m in known} - {name}


def module_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """
    Every module C{name} imports as it loads (see L{runtime_imports}), of
    the package (C{known}) or not: C{from a import b} is C{a.b} where that
    is a module of the package, else C{a}.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(level: int, module: str | None) -> str:
        if level == 0:
            return module or ""
        base = name.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node.level, node.module)
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    found.add(submodule if submodule in known else target)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of C{graph} (its modules in order, the first repeated), or C{None}."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for after in sorted(graph[node]):
            if after in on_path:
                return [*path[path.index(after) :], after]
            if after not in done:
                cycle = visit(after)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


class ImportCycleTests(SynchronousTestCase):
    def test_no_module_imports_one_that_imports_it_back(self) -> None:
        found = modules()
        graph = {name: runtime_imports(name, path, set(found)) for name, path in found.items()}
        self.assertIsNone(find_cycle(graph))

    def test_the_check_finds_a_cycle_through_three_modules(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(find_cycle(graph), ["a", "b", "c", "a"])

    def test_type_only_and_function_level_imports_are_not_followed(self) -> None:
        session = runtime_imports("socks5twist.session", PACKAGE / "session.py", set(modules()))
        self.assertIn("socks5twist.gate", session)
        self.assertNotIn("socks5twist.factory", session)  # under TYPE_CHECKING only
        factory = runtime_imports("socks5twist.factory", PACKAGE / "factory.py", set(modules()))
        self.assertNotIn("socks5twist.metrics", factory)  # imported when metrics are enabled
        self.assertIn("socks5twist.session", factory)


# The modules that do no I/O: bytes or text in, values out.
SANS_IO = (
    "socks5twist.addresses",
    "socks5twist.client.errors",
    "socks5twist.client.negotiation",
    "socks5twist.codec",
    "socks5twist.connection",
    "socks5twist.serverevents",
    "socks5twist.keytab",
    "socks5twist.limits",
    "socks5twist.logsafe",
    "socks5twist.names",
    "socks5twist.networks",
    "socks5twist.passwordformat",
    "socks5twist.proxyheader",
    "socks5twist.gsswire",
    "socks5twist.gss",
    "socks5twist.ruleset",
    "socks5twist.states",
)


def twisted_loaded_by(name: str, found: dict[str, Path]) -> dict[str, set[str]]:
    """
    The Twisted (and zope) modules that loading C{name} imports, by the
    module of the package that imports them: C{name} and every module of
    the package it loads, the package's C{__init__} aside (it serves
    C{import socks5twist}, not the modules under it).
    """
    known = set(found) - {"socks5twist"}
    seen: set[str] = set()
    todo = [name]
    loaded: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        imports = module_imports(module, found[module], known)
        foreign = {m for m in imports if m.split(".")[0] in ("twisted", "zope")}
        if foreign:
            loaded[module] = foreign
        todo.extend(m for m in imports if m in known)
    return loaded


class SansIOTests(SynchronousTestCase):
    def test_sans_io_modules_load_nothing_of_twisted(self) -> None:
        found = modules()
        for name in SANS_IO:
            self.assertEqual(twisted_loaded_by(name, found), {}, name)

    def test_the_check_sees_twisted_loaded_through_another_module(self) -> None:
        found = modules()
        # The session loads Twisted itself; the allow-list's module too.
        self.assertIn("socks5twist.session", twisted_loaded_by("socks5twist.session", found))
        loaded = twisted_loaded_by("socks5twist.gate", found)
        self.assertIn("twisted.internet.address", loaded["socks5twist.policy"])
