"""The house has three floors: every import, function-local ones included, goes down or
sideways on the ground floor, never up and never between the rooms of the first floor."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GROUND = {"features", "models", "store", "policy"}
FIRST = {"training", "serving", "reports"}
TOP = {"cli"}
FLOOR = {**dict.fromkeys(GROUND, 0), **dict.fromkeys(FIRST, 1), **dict.fromkeys(TOP, 2)}
# the root package (`sendwise/__init__.py`, `sendwise/errors.py`) sits under everything
ROOMS = {"sendwise": "sendwise", **{room: room for room in FLOOR}}


def imported_rooms(path: Path, room: str) -> set[tuple[str, int]]:
    """(room, line) of every sendwise room `path` imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [f"sendwise.{room}.{node.module or ''}"] if node.level == 1 else []
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sendwise" and len(parts) > 1 and parts[1]:
                found.add((parts[1], node.lineno))
    return found


def modules() -> list[tuple[str, Path]]:
    return [
        (room, path)
        for room, folder in sorted(ROOMS.items())  # the same order in every test process
        for path in sorted((ROOT / folder).glob("*.py"))
    ]


def test_every_room_is_checked():
    assert {room for room, _ in modules()} == set(ROOMS)


@pytest.mark.parametrize(("room", "path"), modules(), ids=lambda v: getattr(v, "name", v))
def test_imports_go_down(room, path):
    here = FLOOR.get(room, -1)  # the root package (`errors`) is below the ground floor
    for target, line in imported_rooms(path, room):
        target_floor = FLOOR.get(target, -1)
        where = f"{path.relative_to(ROOT)}:{line} imports sendwise.{target}"
        assert target_floor <= here, f"{where}: upward"
        if here == 1 and target_floor == 1:
            assert target == room, f"{where}: first-floor rooms never import each other"
        if here == 0 and target_floor == 0 and target != room:
            assert (room, target) in GROUND_EDGES, f"{where}: not a ground-floor edge we allow"


# the ground floor's own order: errors <- store <- features; models and policy read features'
# outputs as frames, and policy applies models; nothing points back
GROUND_EDGES = {
    ("features", "store"),
    ("policy", "models"),
    ("policy", "store"),
    ("policy", "features"),
}


def test_checker_catches_a_break(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sendwise.serving import engine\n")
    assert ("serving", 2) in imported_rooms(bad, "training")
