"""The house rules of flamby_mpi's imports, read from the code's own AST (no import is run).

Every module belongs to a unit: a subpackage of flamby_mpi (exit/, outputs/, ...) or a module
loose at the top (plan.py, ...). Each unit stands on a floor (FLOORS); a unit imports only units
on lower floors, so nothing imports up or sideways. Within a unit, and in the whole package, no
modules import each other in a circle. At most MAX_LOOSE modules lie loose at the top.

Imports inside functions count as much as those at the top of a module: a deferred import is
still a dependency. A new subpackage or top-level module fails test_every_unit_has_a_floor until
it is given a floor here, with a reason.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "flamby_mpi"
MAX_LOOSE = 12

# unit -> floor; 0 is the ground. A unit may import units on lower floors only.
FLOORS: Dict[str, int] = {
    "flamby_mpi": 0,  # the package's face: __version__, PROCESS_START
    "registry": 1,  # facts written once, standard library only (strategies, datasets, rank -> role)
    "exit": 2,  # errors, failures, preemption, fast exit
    "config": 3,  # the typed config, validated once
    "storage": 3,  # the files of a run's directory (safe_files)
    "datasets": 4,  # FLamby's and the user's datasets behind one DatasetSpec
    "strategies": 4,  # each strategy's server and client halves, FedAvg's arithmetic
    "launch": 4,  # the MPI world, rank -> role, separately started ranks
    "outputs": 4,  # results, logs, telemetry, progress, report
    "runtime": 4,  # start-up marks, devices, import shortcuts
    "plan": 5,  # the config joined with its dataset: what the rest reads
    "checkpoints": 5,  # checkpoint files and --resume
    "transport": 5,  # FedML (the one boundary), the wire format, the in-process twin
    "federation": 6,  # the round protocol, the server and client roles, local training
    "world_size": 6,  # processes a config needs (asks the plan for a user's dataset)
    "driver": 7,  # the one driver of a run
    "cli": 8,  # the command line
    "check": 8,  # the readiness check, a command beside the launcher's (python -m flamby_mpi check)
    "__main__": 9,  # commands: python -m flamby_mpi, .restart, .report
    "restart": 9,
    "report": 9,
}


def modules(package: Path = PACKAGE) -> Dict[str, Tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module of the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (anywhere in its code)."""
    known = modules(package)
    root = package.name
    graph: Dict[str, Set[str]] = {}
    for name, (path, is_package) in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
        graph[name] = {t for t in targets if t in known and (t == root or t.startswith(root + "."))} - {name}
    return graph


def layer_breaches(package: Path = PACKAGE, floors: Dict[str, int] = FLOORS) -> List[str]:
    """Imports of a unit on the same floor or a higher one, as 'a (unit, floor) -> b (...)'."""
    breaches = []
    for source, targets in sorted(imports(package).items()):
        for target in sorted(targets):
            a, b = unit_of(source), unit_of(target)
            if a != b and a in floors and b in floors and floors[b] >= floors[a]:
                breaches.append(f"{source} ({a}, floor {floors[a]}) -> {target} ({b}, floor {floors[b]})")
    return breaches


def circles(package: Path = PACKAGE) -> List[List[str]]:
    """Sets of modules that import each other in a loop (Tarjan's strongly connected components)."""
    graph = imports(package)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def loose_modules(package: Path = PACKAGE) -> List[str]:
    return sorted(p.name for p in package.glob("*.py"))


def test_every_unit_has_a_floor():
    units = {unit_of(m) for m in modules()}
    assert sorted(units - set(FLOORS)) == [], "give each new subpackage or top-level module a floor in FLOORS"


def test_nothing_imports_up_or_sideways():
    assert layer_breaches() == []


def test_no_import_circle():
    assert circles() == []


def test_few_modules_loose_at_the_top():
    loose = loose_modules()
    assert len(loose) <= MAX_LOOSE, f"{len(loose)} modules loose in flamby_mpi/: {loose}; give them a subpackage"


def test_the_rules_catch_an_upward_import_and_a_circle(tmp_path):
    package = tmp_path / "flamby_mpi"
    (package / "exit").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "exit" / "__init__.py").write_text("")
    (package / "exit" / "failures.py").write_text("def f():\n    from ..launch.world import role_of\n")
    (package / "launch").mkdir()
    (package / "launch" / "__init__.py").write_text("")
    (package / "launch" / "world.py").write_text("from ..exit import failures\n")
    (package / "plan.py").write_text("from . import world_size\n")
    (package / "world_size.py").write_text("import flamby_mpi.plan\n")
    floors = {"flamby_mpi": 0, "exit": 1, "launch": 2, "plan": 3, "world_size": 4}
    assert layer_breaches(package, floors) == [
        "flamby_mpi.exit.failures (exit, floor 1) -> flamby_mpi.launch.world (launch, floor 2)",
        "flamby_mpi.plan (plan, floor 3) -> flamby_mpi.world_size (world_size, floor 4)"]
    assert circles(package) == [["flamby_mpi.exit.failures", "flamby_mpi.launch.world"],
                                ["flamby_mpi.plan", "flamby_mpi.world_size"]]
    for i in range(MAX_LOOSE):
        (package / f"m{i}.py").write_text("")
    assert len(loose_modules(package)) == MAX_LOOSE + 3
