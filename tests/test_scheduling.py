"""tests/conftest.py's plan for pytest-xdist: which tests share a worker, and in what order they start."""

from __future__ import annotations

from types import SimpleNamespace

from tests.conftest import longest_first, work_unit


def item(nodeid: str, slow: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        nodeid=nodeid, get_closest_marker=lambda name: object() if slow and name == "slow" else None
    )


def test_a_module_is_one_unit_and_the_docker_modules_are_one_together() -> None:
    assert work_unit("tests/test_gates.py::test_a[x]") == work_unit("tests/test_gates.py::test_b")
    assert work_unit("tests/test_gates.py::test_a") != work_unit("tests/test_promote.py::test_a")
    assert (
        work_unit("tests/test_readme.py::test_x")
        == work_unit("tests/test_compose_stack.py::test_y")
        == "docker"
    )


def test_docker_then_slow_units_first_keeping_each_units_order() -> None:
    items = [
        item("tests/test_a.py::one"),
        item("tests/test_b.py::fast"),
        item("tests/test_b.py::slow", slow=True),
        item("tests/test_b.py::stops_the_server"),
        item("tests/test_readme.py::docs"),
    ]
    ordered = [i.nodeid for i in longest_first(items)]  # type: ignore[arg-type]
    assert ordered == [
        "tests/test_readme.py::docs",
        "tests/test_b.py::fast",
        "tests/test_b.py::slow",
        "tests/test_b.py::stops_the_server",
        "tests/test_a.py::one",
    ]
