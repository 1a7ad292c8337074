"""The TorchServe image (torchserve/Dockerfile) with the exported archive, run through a real Docker engine.

Its inference port is published on 127.0.0.1 only. It gets healthy within a measured time, keeps
token auth on, answers 100 real reviews with the local predictor's labels, survives a bad body, and
`docker stop` ends it with SIGTERM (no SIGKILL) within Docker's 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests

from restar.config import SourceConfig
from restar.data.freeze import DATA_DIR_ENV, read_category
from tests import docker_kit
from tests.upstream_rows import CATEGORY

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    key: str
    ready_s: float

    def post(self, body: bytes | str, key: str | None = "") -> requests.Response:
        """POST a prediction with the server's key, another `key`, or none (key=None)."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key or self.key}"
        return requests.post(f"{self.url}/predictions/restar", data=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def served(torchserve_image: str) -> Iterator[Served]:
    with docker_kit.container(torchserve_image, run_args=("-p", "127.0.0.1::8080")) as name:
        url = f"http://127.0.0.1:{docker_kit.published_port(name, 8080)}"
        key, ready_s = docker_kit.wait_until_healthy(name, url)
        yield Served(name=name, url=url, key=key, ready_s=ready_s)


@pytest.fixture(scope="module")
def reviews(reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(reviews_dir))
        rows = read_category(CATEGORY, SourceConfig(categories=[CATEGORY]))
    rows = rows[rows["text"].fillna("").str.strip() != ""]
    return rows[["title", "text"]].iloc[300:400].reset_index(drop=True)


def test_healthy_within_a_measured_time(served: Served) -> None:
    assert served.ready_s < 240
    print(f"torchserve image: healthy {served.ready_s:.1f} s after docker run")


def test_token_auth_stays_on(served: Served) -> None:
    assert requests.get(f"{served.url}/ping", timeout=30).status_code == 400  # 0.12 wants the token on /ping
    body = json.dumps({"text": "great"})
    assert served.post(body, key=None).status_code == 400
    assert served.post(body, key="wrong-key").status_code == 400
    assert served.post(body).status_code == 200


def test_same_labels_as_the_local_predictor(
    served: Served, reviews: pd.DataFrame, tiny_model_dir: Path, tmp_path: Path
) -> None:
    answers = []
    for title, text in zip(reviews["title"], reviews["text"], strict=True):
        response = served.post(json.dumps({"title": title, "text": text}))
        assert response.status_code == 200, response.text
        answers.append(response.json()["label"])
    reviews.to_csv(tmp_path / "reviews.csv", index=False)
    done = subprocess.run(
        [str(BIN / "restar"), "predict", "--input", "reviews.csv", "--output", "local.csv"],
        cwd=tmp_path,
        env={**os.environ, "RESTAR_MODEL_URI": str(tiny_model_dir)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert answers == pd.read_csv(tmp_path / "local.csv")["label"].tolist()


def test_a_bad_body_gets_a_4xx_and_the_next_request_succeeds(served: Served) -> None:
    for body in (b"{not json", b"", json.dumps({"texts": []}), json.dumps({"title": "no text"})):
        response = served.post(body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
    response = served.post(json.dumps({"text": "Works fine after the bad ones."}))
    assert response.status_code == 200 and response.json()["label"]


def test_docker_stop_ends_it_with_sigterm_within_10_s(served: Served) -> None:
    started = time.monotonic()
    docker_kit.docker("stop", "--time", "10", served.name)
    stopped_s = time.monotonic() - started
    state = docker_kit.inspect(served.name)["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state  # 137: Docker's SIGKILL after 10 s
    assert stopped_s < 10, f"docker stop took {stopped_s:.1f} s"
    print(f"torchserve image: docker stop took {stopped_s:.1f} s, exit code {state['ExitCode']}")
