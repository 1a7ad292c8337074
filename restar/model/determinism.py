"""Whether a model's answer to a text depends on the text alone.

Two measurements on the same texts, each the largest absolute difference in any calibrated probability:
- batch: each text scored alone, against all of them in one batch and in small batches in reverse order
  (other neighbours, other padding);
- process: this process against a fresh one running on one thread (another process, another thread
  count, as TorchServe's workers and the batch predictor differ).

The evaluate stage records both with the model's metrics; the release report shows them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOLERANCE = 1e-5  # what "the same answer" means for fp32 arithmetic in another order
SMALL_BATCH = 7  # batches that split the texts unevenly, so the padding differs from the whole batch's


def spread_by_length(texts: Sequence[str], count: int = 64) -> list[str]:
    """`count` texts from the shortest to the longest, evenly spaced by length, in a fixed order."""
    by_length = sorted(texts, key=len)
    step = max(1, len(by_length) // count)
    return by_length[::step][:count]


def batch_probabilities(model_dir: Path, texts: Sequence[str]) -> tuple[np.ndarray, float]:
    """The texts scored in one batch, and the largest difference to each scored alone or in small
    batches in reverse order."""
    from restar.model.inference import InferenceCore  # torch: only when measuring (the report reads TOLERANCE

    whole = InferenceCore.from_dir(model_dir, batch_size=len(texts))
    alone = np.vstack([whole.probabilities([text]) for text in texts])
    together = whole.probabilities(list(texts))
    small = InferenceCore.from_dir(model_dir, batch_size=SMALL_BATCH)
    reversed_order = small.probabilities(list(texts)[::-1])[::-1]
    return together, float(max(np.abs(alone - together).max(), np.abs(alone - reversed_order).max()))


def probabilities_in_fresh_process(model_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """The texts scored by `python -m restar.model.determinism` on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "restar.model.determinism", str(model_dir)],
        input=json.dumps(list(texts)),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scoring in a fresh process failed: {done.stderr.strip()[-2000:]}")
    return np.asarray(json.loads(done.stdout), dtype=float)


def measure(model_dir: Path, texts: Sequence[str]) -> dict[str, float]:
    """Both measurements, and how many texts they cover."""
    together, batch_diff = batch_probabilities(model_dir, texts)
    there = probabilities_in_fresh_process(model_dir, texts)
    return {
        "determinism_texts": len(texts),
        "determinism_batch_max_abs_diff": batch_diff,
        "determinism_process_max_abs_diff": float(np.abs(together - there).max()),
    }


def main() -> None:
    """Score the JSON list of texts on stdin; print their probabilities as JSON (float64 text, exact)."""
    import torch

    from restar.model.inference import InferenceCore

    torch.set_num_threads(1)
    texts = json.loads(sys.stdin.read())
    probs = InferenceCore.from_dir(sys.argv[1]).probabilities(texts)
    print(json.dumps(probs.astype(float).tolist()))


if __name__ == "__main__":
    main()
