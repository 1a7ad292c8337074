"""One review, one answer: a text's probabilities do not depend on the texts scored beside it.

For every backend of every kind we ship: alone, in batches of 1 to 64, in any order, with any padding
(texts of very different lengths side by side), through the inference core, the pyfunc, the local
predictor and a real TorchServe batching requests from concurrent clients. fp32 backends agree within
1e-5; the int8 backend, which scores each text alone (restar.model.onnx_scorer.ALONE_BACKENDS), bit for bit.
"""

from __future__ import annotations

import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from restar.batch.predictor import predict_file
from restar.config import BaselineConfig
from restar.labels import LABELS, rating_to_label
from restar.model.inference import InferenceCore, ModelMetadata
from restar.model.onnx_export import convert
from restar.model.onnx_scorer import ALONE_BACKENDS
from restar.model.tfidf import KIND, fit
from restar.serving.serve_local import torchserve
from tests.served import export_production, logged_pyfunc, register_production

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBS = ["p_neg", "p_neu", "p_pos"]
MODELS = ["torch", "onnx", "onnx-int8", "tfidf"]


@pytest.fixture(scope="module")
def texts(reviews_dir: Path) -> list[str]:
    """64 real review texts, from a few words to hundreds (the padding differs from batch to batch)."""
    rows = pd.read_json(sorted(reviews_dir.glob("*.jsonl*"))[0], lines=True, nrows=600)
    present = [text for text in rows["text"].astype(str) if text.strip()]
    by_length = sorted(present, key=len)
    picked = by_length[:: max(1, len(by_length) // 64)][:64]
    random.Random(0).shuffle(picked)
    return picked


@pytest.fixture(scope="module")
def models(
    tiny_model_dir: Path, reviews_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny transformer on each backend, and a small TF-IDF model fitted on real rows."""
    root = tmp_path_factory.mktemp("invariance")
    folders = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        folder = root / backend
        shutil.copytree(tiny_model_dir, folder)
        if backend != "torch":
            convert(folder, backend)
        folders[backend] = folder
    rows = pd.read_json(sorted(reviews_dir.glob("*.jsonl*"))[0], lines=True, nrows=600)
    frame = pd.DataFrame({"text": rows["text"], "label": rows["rating"].map(rating_to_label)})
    folders["tfidf"] = root / "tfidf"
    folders["tfidf"].mkdir()
    fit(frame, BaselineConfig(max_ngram=1)).save(folders["tfidf"])
    ModelMetadata(max_length=0, base_model="tfidf-logreg", kind=KIND, labels=LABELS).save(folders["tfidf"])
    return folders


def tolerance(model: str) -> float:
    return 0.0 if model in ALONE_BACKENDS else 1e-5


def alone(core: InferenceCore, texts: list[str]) -> np.ndarray:
    return np.vstack([core.probabilities([text]) for text in texts])


def predicted_alone(core: InferenceCore, texts: list[str]) -> np.ndarray:
    """What each text gets as a request of its own (prepared as the consumers prepare it)."""
    return np.vstack([core.predict([text])[PROBS].to_numpy(float) for text in texts])


@pytest.mark.parametrize("model", MODELS)
def test_the_core_gives_a_text_the_same_answer_in_any_batch(
    model: str, models: dict[str, Path], texts: list[str]
) -> None:
    core = InferenceCore.from_dir(models[model], batch_size=64)
    reference = alone(core, texts)
    shuffle = random.Random(1)
    for size in (1, 2, 7, 32, 64):
        order = list(range(len(texts)))
        shuffle.shuffle(order)
        scored = np.empty_like(reference)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            scored[chunk] = core.probabilities([texts[i] for i in chunk])
        np.testing.assert_allclose(
            scored, reference, rtol=0, atol=tolerance(model), err_msg=f"batches of {size}"
        )


@pytest.mark.parametrize("model", ["onnx", "onnx-int8"])
def test_the_pyfunc_and_the_predictor_agree_with_scoring_alone(
    model: str, models: dict[str, Path], texts: list[str], tmp_path: Path
) -> None:
    reference = predicted_alone(InferenceCore.from_dir(models[model]), texts)
    pyfunc = logged_pyfunc(models[model], tmp_path)
    served = pyfunc.predict(pd.DataFrame({"text": texts}))[PROBS].to_numpy(float)
    np.testing.assert_allclose(served, reference, rtol=0, atol=tolerance(model))

    source = tmp_path / "reviews.parquet"
    pd.DataFrame({"text": texts}).to_parquet(source)
    predict_file(source, tmp_path / "out.parquet", str(models[model]), progress=False, chunk_rows=5)
    predicted = pd.read_parquet(tmp_path / "out.parquet")[PROBS].to_numpy(float)
    np.testing.assert_allclose(predicted, reference, rtol=0, atol=tolerance(model))


@pytest.mark.slow
def test_torchserve_answers_a_review_the_same_whoever_shares_its_batch(
    models: dict[str, Path], texts: list[str], tmp_path: Path
) -> None:
    """Eight clients at once, each sending the same review and then its own others, against the int8
    model served with a 50 ms batch window, so requests from different clients share batches."""
    shipped = yaml.safe_load((REPO_ROOT / "torchserve" / "model-config.yaml").read_text())
    config = tmp_path / "model-config.yaml"
    config.write_text(yaml.safe_dump({**shipped, "maxBatchDelay": 50}))
    work = tmp_path / "work"
    export_production(register_production(models["onnx-int8"], tmp_path), work, model_config=config)
    reference = predicted_alone(InferenceCore.from_dir(models["onnx-int8"]), texts)
    start = threading.Barrier(8)

    def client(number: int) -> list[tuple[int, list[float]]]:
        answers = []
        start.wait()
        for index in [0, *range(1 + number, len(texts), 8)]:
            response = server.predict({"text": texts[index]})
            assert response.status_code == 200, response.text
            answers.append((index, [response.json()[name] for name in PROBS]))
        return answers

    with (
        torchserve(
            work / "model-store", REPO_ROOT / "torchserve" / "config.properties", work / "run"
        ) as server,
        ThreadPoolExecutor(8) as pool,
    ):
        answered = [pair for answers in pool.map(client, range(8)) for pair in answers]
    assert len(answered) == 8 + len(texts) - 1
    for index, probabilities in answered:
        np.testing.assert_allclose(
            probabilities, reference[index], rtol=0, atol=1e-6, err_msg=f"text {index}"
        )
