"""A real TorchServe process serving the exported production archive, token auth on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from registry.service import VersionNotFound
from restar.serving.export_torchserve import ExportError, export_torchserve
from restar.serving.serve_local import LocalTorchServe, torchserve
from tests.served import register_production, serve_production

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LONG = "Longer than the model reads. " * 200
TEXTS = ["Great box, love it!", "Arrived broken and nobody answered.", "It is fine, I guess.", "🔥🔥", LONG]
PROBS = ["p_neg", "p_neu", "p_pos"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registered(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ts_registry")
    return root, register_production(tiny_model_dir, root)


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    with serve_production(registered[1], tmp_path_factory.mktemp("torchserve")) as server:
        yield server


@pytest.fixture(scope="module")
def pyfunc_predictions(registered) -> pd.DataFrame:
    _, uri = registered
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/restar@production")
        return model.predict(pd.DataFrame({"text": TEXTS}))
    finally:
        mlflow.set_tracking_uri(None)


def test_single_and_batch_match_the_pyfunc(served, pyfunc_predictions: pd.DataFrame) -> None:
    singles = [served.predict({"text": text}) for text in TEXTS]
    assert all(r.status_code == 200 for r in singles)
    single_rows = pd.DataFrame([r.json() for r in singles])
    batch = served.predict({"texts": TEXTS})
    assert batch.status_code == 200
    batch_rows = pd.DataFrame(batch.json())
    for rows in (single_rows, batch_rows):
        assert rows["label"].tolist() == pyfunc_predictions["label"].tolist()
        np.testing.assert_allclose(
            rows[PROBS].to_numpy(float), pyfunc_predictions[PROBS].to_numpy(float), atol=1e-5
        )
        assert rows["truncated"].tolist() == [False, False, False, False, True]
        assert set(rows["model_version"]) == {1}


def test_concurrent_requests_are_batched_and_all_answered(served, pyfunc_predictions: pd.DataFrame) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda i: served.predict({"text": TEXTS[i % len(TEXTS)]}), range(48)))
    assert [r.status_code for r in responses] == [200] * 48
    for index, response in enumerate(responses):
        expected = pyfunc_predictions.iloc[index % len(TEXTS)]
        assert response.json()["p_pos"] == pytest.approx(expected["p_pos"], abs=1e-5)


def test_upstream_rows_are_prepared_as_in_training(served) -> None:
    upstream = [
        {
            "rating": 1.0,
            "title": "Not worth it",
            "text": "Broke in a day.<br /><br />Support &amp; refund: none.",
        },
        {"rating": 5.0, "title": "Five Stars", "text": "Love it<br />"},
    ]
    prepared = served.predict({"texts": ["Not worth it. Broke in a day. Support & refund: none.", "Love it"]})
    rows = served.predict({"texts": upstream})
    single = served.predict(upstream[0])  # an upstream row as it is
    assert [r.status_code for r in (prepared, rows, single)] == [200] * 3
    expected = pd.DataFrame(prepared.json())[PROBS].to_numpy(float)
    np.testing.assert_allclose(pd.DataFrame(rows.json())[PROBS].to_numpy(float), expected, atol=1e-5)
    np.testing.assert_allclose([single.json()[p] for p in PROBS], expected[0], atol=1e-5)


def test_requests_without_the_token_are_refused(served) -> None:
    response = served.predict(key=None, body={"text": "hello"})
    assert response.status_code in (400, 401)
    assert "Token Authorization failed" in response.text
    assert served.predict(key="wrong-key", body={"text": "hello"}).status_code in (400, 401)


def test_model_api_is_off_and_metrics_are_prometheus(served) -> None:
    register = requests.post(
        f"{served.management_url}/models",
        params={"url": "restar.mar"},
        headers={"Authorization": f"Bearer {served.keys['management']}"},
        timeout=30,
    )
    assert register.status_code >= 400
    assert "# TYPE" in requests.get(f"{served.metrics_url}/metrics", timeout=30).text
    assert requests.get(f"{served.inference_url}/ping", timeout=30).status_code in (400, 401)  # token needed


def test_container_healthcheck_script(served, tmp_path: Path) -> None:
    script = [sys.executable, str(REPO_ROOT / "torchserve" / "healthcheck.py"), served.inference_url]
    assert subprocess.run(script, cwd=served.workdir, capture_output=True).returncode == 0
    assert subprocess.run(script, cwd=tmp_path, capture_output=True).returncode == 1  # no key file here


def test_export_without_production_alias_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(VersionNotFound, match=r"no alias 'production'"):
        export_torchserve(
            "models:/restar@production",
            tmp_path / "a",
            tmp_path / "m",
            REPO_ROOT / "torchserve" / "handler.py",
            REPO_ROOT / "torchserve" / "model-config.yaml",
        )
    with pytest.raises(ExportError, match="not a registry URI"):
        export_torchserve(
            "runs:/abc/model",
            tmp_path / "a",
            tmp_path / "m",
            REPO_ROOT / "torchserve" / "handler.py",
            REPO_ROOT / "torchserve" / "model-config.yaml",
        )
    assert not (tmp_path / "m").exists()


def test_archive_carries_the_registry_version(served) -> None:
    import zipfile

    with zipfile.ZipFile(served.workdir.parent / "model-store" / "restar.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert json.loads(archive.read("registry.json"))["version"] == 1
        assert "model.safetensors" in archive.namelist()
    assert manifest["model"]["modelVersion"] == "1"


def test_memory_is_measured(served) -> None:
    assert 100 < served.memory_rss_mb() < 8000


def test_int8_export_is_served_through_onnx_runtime(
    registered, pyfunc_predictions: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uri = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = export_torchserve(
        "models:/restar@production",
        tmp_path / "artifacts",
        tmp_path / "model-store",
        REPO_ROOT / "torchserve" / "handler.py",
        REPO_ROOT / "torchserve" / "model-config.yaml",
        backend="onnx-int8",
    )
    assert result["backend"] == "onnx-int8"
    packed = {path.name for path in (tmp_path / "artifacts").iterdir()}
    assert "model.int8.onnx" in packed
    assert "model.safetensors" not in packed  # so the worker cannot be running PyTorch weights
    with torchserve(
        tmp_path / "model-store", REPO_ROOT / "torchserve" / "config.properties", tmp_path / "run"
    ) as server:
        answers = [server.predict({"text": text}).json() for text in TEXTS]
    assert [answer["label"] for answer in answers] == pyfunc_predictions["label"].tolist()
    probabilities = np.array([[answer[name] for name in PROBS] for answer in answers])
    np.testing.assert_allclose(probabilities, pyfunc_predictions[PROBS].to_numpy(float), atol=0.1)


def last_pid() -> int:
    """The last process or thread id the kernel handed out (threads count from the same counter)."""
    return int(Path("/proc/sys/kernel/ns_last_pid").read_text())


@pytest.mark.skipif(not Path("/proc/sys/kernel/ns_last_pid").exists(), reason="needs Linux /proc")
def test_the_frontend_starts_no_thread_per_batch(served) -> None:
    """TorchServe passes each batch to its worker through CompletableFuture.runAsync. With the JDK's
    common pool at parallelism 1, its default on 2 cores, that starts a thread per call; the
    shipped config.properties raises the parallelism (vmargs). On 3 or more cores the JDK's default
    already keeps the pool, so only a 2-core host (as CI is) can catch the line going missing.
    The kernel's counter is machine-wide, so other processes (a parallel test run) add to it: the
    fewest ids over three rounds counts, and with a thread per call every round takes at least 40."""
    for text in TEXTS:
        assert served.predict({"text": text}).status_code == 200
    taken = []
    for _round in range(3):
        before = last_pid()
        for index in range(40):
            assert served.predict({"text": TEXTS[index % len(TEXTS)]}).status_code == 200
        taken.append(last_pid() - before)
    assert min(taken) < 20, taken


def test_stops_cleanly(served) -> None:  # last: stops the shared server
    assert served.stop() == 0
    assert served.process.poll() == 0
