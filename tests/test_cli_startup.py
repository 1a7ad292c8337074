"""The CLIs start fast: `--help` and usage errors never import torch, transformers, MLflow or pandas.

Each check runs in a fresh interpreter, because this test process has imported all of them already.
Timing itself is measured by scripts/bench_cli.py, not asserted here.
"""

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "transformers",
    "mlflow",
    "pandas",
    "pyarrow",
    "numpy",
    "sqlalchemy",
    "onnxruntime",
    "pyspark",
)

# Run a CLI in-process with these arguments, then report which heavy modules it loaded.
PROBE = """
import json, sys
from {module} import cli
try:
    cli.main({args!r}, prog_name="probe")
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def loaded_heavy_modules(module: str, args: list[str]) -> list[str]:
    code = PROBE.format(module=module, args=args, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("restar.cli", ["--help"]),
        ("restar.cli", ["registry", "list", "--help"]),
        ("restar.cli", ["predict", "--help"]),
        (
            "restar.cli",
            ["predict", "--engine", "spark", "--conf", "bad", "--input", "a.csv", "--output", "b.csv"],
        ),
        ("restar.cli", ["report", "--help"]),
        ("restar.cli", ["serve", "--help"]),
        ("restar.cli", ["follow", "--help"]),
        ("restar.cli", ["no-such-command"]),
        ("promotion.cli", ["--help"]),
        ("promotion.cli", ["status", "--help"]),
        ("promotion.cli", ["--rollback", "--force"]),  # a usage error, found before any work
    ],
)
def test_help_and_usage_errors_load_no_heavy_module(module: str, args: list[str]) -> None:
    assert loaded_heavy_modules(module, args) == []


def test_the_probe_sees_heavy_imports() -> None:
    # The same probe on a command that does load the model stack, so the check above can fail.
    assert "pandas" in loaded_heavy_modules(
        "restar.cli", ["predict", "--input", "/nonexistent.csv", "--output", "/nonexistent.parquet"]
    )
