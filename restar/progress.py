"""Progress bars on a terminal only: in a log (CI, `dvc repro > log`, a container) each bar would be
hundreds of carriage-return updates, so there each stage says what it did in one log line instead."""

from __future__ import annotations

import os
import sys

# tqdm (restar's own bars, Hugging Face's), huggingface_hub and MLflow's artifact transfers
QUIET = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_unless_terminal() -> bool:
    """Turn every progress bar off when stderr is not a terminal (settings the user made win);
    True when it did. Child processes (dvc stages, `restar bench`) inherit the setting."""
    if sys.stderr.isatty():
        return False
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    return True
