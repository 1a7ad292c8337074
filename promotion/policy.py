"""Promotion policies: which gates, with which thresholds, guard an alias (configs/promotion*.yaml)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promotion.gates import Gate

ENTRY_POINT_GROUP = "restar.gates"
POLICY_ENV = "RESTAR_PROMOTION_POLICY"
DEFAULT_POLICY = Path("configs/promotion.yaml")
# Written by the pipeline's promote stage (`restar promote --out`); it names the policy that stage used.
PIPELINE_RECORD = Path("outputs/dvc_run/promotion.json")


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
    # A command (argv, no shell) run after each move of the alias, with RESTAR_MODEL, RESTAR_ALIAS and
    # RESTAR_VERSION set: e.g. `restar follow --once ...` where the registry sends no webhooks.
    post_promote: list[str] = Field(default_factory=list)

    def gate_param(self, gate: str, key: str) -> object | None:
        """A parameter of the first gate of that name, e.g. the accuracy gate's `min`; None without one."""
        return next((spec.params.get(key) for spec in self.gates if spec.name == gate), None)


@dataclass(frozen=True)
class PolicyChoice:
    """Which policy file is in force, and why: `source` is flag, env, pipeline, config or default;
    `origin` names the option, variable, record or run config the path came from."""

    path: Path
    source: str
    origin: str = ""

    @property
    def why(self) -> str:
        return {
            "flag": "from --policy",
            "env": f"from ${self.origin}",
            "pipeline": f"from the last pipeline run ({self.origin})",
            "config": f"from the run config ({self.origin})",
            "default": "the built-in default",
        }[self.source]

    def describe(self, policy_name: str) -> str:
        return f"policy {self.path} ({policy_name!r}), {self.why}"

    def as_dict(self, policy_name: str) -> dict[str, str]:
        return {"path": str(self.path), "name": policy_name, "source": self.source, "origin": self.origin}


def choose_policy(
    flag: Path | None, environ: Mapping[str, str] = os.environ, record: Path = PIPELINE_RECORD
) -> PolicyChoice:
    """--policy, else $RESTAR_PROMOTION_POLICY, else the policy the last pipeline run recorded (when
    that file is still readable), else configs/promotion.yaml."""
    if flag is not None:
        return PolicyChoice(flag, "flag", "--policy")
    if environ.get(POLICY_ENV):
        return PolicyChoice(Path(environ[POLICY_ENV]), "env", POLICY_ENV)
    recorded = recorded_policy(record)
    if recorded is not None:
        return PolicyChoice(recorded, "pipeline", str(record))
    return PolicyChoice(DEFAULT_POLICY, "default")


def recorded_policy(record: Path) -> Path | None:
    """The policy path a pipeline decision record names, if the record and that policy file are readable."""
    try:
        path = json.loads(record.read_text(encoding="utf-8"))["policy"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(path) if isinstance(path, str) and Path(path).is_file() else None


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
