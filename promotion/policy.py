"""Promotion policies: which gates, with which thresholds, guard an alias (configs/promotion*.yaml)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promotion.gates import Gate

ENTRY_POINT_GROUP = "restar.gates"


class PolicyError(ValueError):
    """A policy file is unreadable, names an unknown gate, or gives a gate a bad parameter."""


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    model: str = "restar"
    alias: str = "production"
    gates: list[GateSpec] = Field(min_length=1)

    def gate_param(self, gate: str, key: str) -> object | None:
        """A parameter of the first gate of that name, e.g. the accuracy gate's `min`; None without one."""
        return next((spec.params.get(key) for spec in self.gates if spec.name == gate), None)


def available_gates() -> dict[str, type[Gate]]:
    """Every gate class registered under the `restar.gates` entry-point group, by name."""
    return {entry.name: entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)}


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: policy file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Policy.model_validate(raw)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: {problems}") from exc


def build_gates(policy: Policy) -> list[Gate]:
    """Instantiate the policy's gates; unknown names and bad parameters fail before anything runs."""
    known = available_gates()
    gates = []
    for index, spec in enumerate(policy.gates):
        if spec.name not in known:
            raise PolicyError(
                f"unknown gate {spec.name!r} in policy {policy.name!r}; "
                f"known gates: {', '.join(sorted(known))}"
            )
        gate_class = known[spec.name]
        try:
            params = gate_class.Params.model_validate(spec.params)
        except ValidationError as exc:
            problems = "; ".join(
                f"gates.{index}.params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise PolicyError(f"policy {policy.name!r}, gate {spec.name!r}: {problems}") from exc
        gates.append(gate_class(params))
    return gates
