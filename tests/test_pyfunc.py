import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from restar.inference import InferenceCore
from restar.labels import OUTPUT_COLUMNS
from restar.pyfunc import log_pyfunc

TEXTS = [
    "Absolutely love this subscription box, great value!",
    "It was okay. Some items were nice, others not.",
    "Arrived broken and customer service never answered.",
    "",
    "🔥🔥🔥",
]

LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"text": json.loads(sys.argv[2])}))
print(out.to_json(orient="records"))
"""


def test_pyfunc_in_a_fresh_process_matches_the_core(tiny_model_dir: Path, tracking_uri: str) -> None:
    with mlflow.start_run() as run:
        info = log_pyfunc(tiny_model_dir)
    assert info.signature.inputs.input_names() == ["text"]
    assert info.saved_input_example_info is not None

    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, f"runs:/{run.info.run_id}/model", json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        check=True,
    )
    served = pd.DataFrame(json.loads(result.stdout.strip().splitlines()[-1]))
    local = InferenceCore.from_dir(tiny_model_dir).predict(TEXTS)

    assert list(served.columns) == list(OUTPUT_COLUMNS)
    assert served["label"].tolist() == local["label"].tolist()
    probs = ["p_neg", "p_neu", "p_pos"]
    np.testing.assert_allclose(served[probs].to_numpy(float), local[probs].to_numpy(float), atol=1e-5)


def test_logged_model_carries_calibration_and_no_pickle(tiny_model_dir: Path, tracking_uri: str) -> None:
    with mlflow.start_run():
        info = log_pyfunc(tiny_model_dir)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    files = {path.name for path in local.rglob("*")}
    assert "restar.json" in files
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".bin"))]
    metadata = json.loads(next(local.rglob("restar.json")).read_text())
    assert metadata["abstain_threshold"] == 0.65
    assert metadata["temperature"] == 1.3
