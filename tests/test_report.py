"""`restar report VERSION` and the report restar-promote writes after a move, on a real embedded MLflow
store: a tiny model evaluated by the evaluate stage (which logs the plots), registered, and promoted
through `restar-promote` with a real latency gate (`restar bench` in a fresh process)."""

from __future__ import annotations

import base64
import json
import random
import re
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image

from promotion.cli import cli as promote_cli
from registry.service import Registry
from restar.cli import cli as restar_cli
from restar.labels import rating_to_label
from restar.model.pyfunc import log_pyfunc
from restar.model.register import lineage_description, lineage_tags
from restar.report.release import PLOTS
from restar.training.evaluate import PLOT_FILES, evaluate
from tests.synthetic_reviews import review

CHROMIUM = Path("/usr/bin/chromium")
# This test checks what is recorded, not speed: the shared 2-core machine can be very slow.
SLOW_MACHINE = {"max_avg_ms": 60_000, "max_p95_ms": 60_000}
LINEAGE = {
    "config": "ci (configs/ci.yaml)",
    "model": "transformer tiny",
    "git commit": "0123abc4567def" * 2 + "0123abc4567d",
    "data sha256": "5eed" * 16,
    "data rows": "train 10, dev 4, eval 4",
}


class Tables(HTMLParser):
    """Each <table>'s rows as lists of cell texts, under the <h2> title of its section."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.title = ""
        self._in_title = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "h2":
            self._in_title, self.title = True, ""
        elif tag == "table":
            self.tables[self.title] = []
        elif tag == "tr":
            self.tables[self.title].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_title = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self.title][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def row(rows: list[list[str]], first: str) -> list[str]:
    return next(r for r in rows if r and r[0] == first)


def write_policy(path: Path, gates: list[dict]) -> Path:
    path.write_text(json.dumps({"name": path.stem, "alias": "production", "gates": gates}))
    return path


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    metrics: dict[str, float]
    run_id: str
    data: Path


def eval_split(data_dir: Path, rows: int = 40) -> Path:
    rng = random.Random(7)
    reviews = [review(rng, product, rng.randint(1, 5)) for product in range(rows)]
    frame = pd.DataFrame(
        {"text": [r["text"] for r in reviews], "label": [rating_to_label(r["rating"]) for r in reviews]}
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(data_dir / "eval.parquet")
    return data_dir / "eval.parquet"


def promote(*args: str) -> object:
    return CliRunner().invoke(promote_cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Store:
    """v1: evaluated (plots logged to its run), promoted with a latency gate; v2: no plots, promoted
    after v1, so v1's history holds a record with previous_version 1."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("RESTAR_AUDIT_DB_URL", raising=False)
        patch.chdir(root)
        mlflow.set_tracking_uri(uri)
        data = eval_split(root / "data")
        with mlflow.start_run() as run:
            info = log_pyfunc(tiny_model_dir)
        run_dir = root / "run"
        run_dir.mkdir()
        (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run.info.run_id}))
        metrics = evaluate(tiny_model_dir, data.parent, run_dir)
        registry = Registry("restar", uri)
        registry.register(
            info.model_uri,
            run.info.run_id,
            lineage_tags(LINEAGE),
            metrics,
            description=lineage_description(LINEAGE),
        )
        with mlflow.start_run() as bare:
            bare_info = log_pyfunc(tiny_model_dir)
        registry.register(bare_info.model_uri, bare.info.run_id, {}, metrics)

        latency = {"name": "latency", "params": {"calls": 5, "warmup": 1, "data": str(data), **SLOW_MACHINE}}
        loose = write_policy(root / "loose.yaml", [{"name": "accuracy", "params": {"min": 0.0}}, latency])
        first = promote("--version", "1", "--policy", str(loose))
        assert first.exit_code == 0, first.output
        (root / "first_promotion.txt").write_text(first.output)
        metric_only = write_policy(root / "metric_only.yaml", [{"name": "accuracy", "params": {"min": 0.0}}])
        second = promote("--version", "2", "--policy", str(metric_only))
        assert second.exit_code == 0, second.output
        mlflow.set_tracking_uri(None)
    return Store(root, uri, metrics, run.info.run_id, data)


@pytest.fixture
def in_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.delenv("RESTAR_AUDIT_DB_URL", raising=False)
    monkeypatch.chdir(store.root)
    return store


def report(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(restar_cli, ["report", *args])
    return result.exit_code, result.output


def test_promote_writes_the_report_and_logs_it_to_the_run(in_store: Store) -> None:
    output = (in_store.root / "first_promotion.txt").read_text()
    assert "report: outputs/reports/restar-v1.html" in output
    page = (in_store.root / "outputs/reports/restar-v1.html").read_text()
    assert "restar v1: release report" in page
    logged = [item.path for item in MlflowClient(in_store.uri).list_artifacts(in_store.run_id, "reports")]
    assert logged == ["reports/restar-v1.html"]


def test_report_is_self_contained_with_gates_plots_lineage_and_audit(in_store: Store, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "strict.yaml",
        [{"name": "accuracy", "params": {"min": 0.99}}, {"name": "latency", "params": SLOW_MACHINE}],
    )
    out = tmp_path / "v1.html"
    code, output = report("1", "--policy", str(policy), "--out", str(out))
    assert code == 0, output
    page = out.read_text()

    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(PLOTS)
    for image in images:
        assert image.startswith("data:image/png;base64,")
        assert base64.b64decode(image.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    found = tables(page)
    accuracy = row(found["Promotion gates"], "accuracy")
    value = in_store.metrics["eval_accuracy"]
    assert accuracy[1:5] == ["FAIL", f"{value:.4g}", "0.99", f"{value - 0.99:.4g}"]
    latency = row(found["Promotion gates"], "latency")  # recorded by restar-promote, not run again
    assert latency[1] == "PASS" and "5 calls" in latency[5] and "(promote)" in latency[6]
    assert "5 calls" in found["Latency"][1][3]

    determinism = found["Determinism"][1:]  # measured by the evaluate stage on the eval texts
    assert [r[2] for r in determinism] == ["yes", "yes"]
    assert [float(r[1]) for r in determinism] == [
        pytest.approx(in_store.metrics[name], rel=1e-3, abs=1e-12)
        for name in ("determinism_batch_max_abs_diff", "determinism_process_max_abs_diff")
    ]

    lineage = dict(r for r in found["Lineage"][1:])
    assert lineage["run id"] == in_store.run_id
    assert lineage["git commit"] == "0123abc4567d"  # short in the tags,
    assert lineage["data"] == "5eed5eed5eed (train 10 / dev 4 / eval 4)"
    in_full = lineage["in full (the version's description)"]  # in full in the description
    assert LINEAGE["git commit"] in in_full and LINEAGE["data sha256"] in in_full

    audit = found["Audit history"][1:]
    assert [(r[1], r[2], r[4]) for r in audit] == [
        ("promote", "moved", "v1 \u2192 v2"),
        ("promote", "moved", "from none"),
    ]


def test_a_version_without_logged_plots_says_so(in_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "v2.html"
    gates = [{"name": "accuracy", "params": {"min": 0.0}}, {"name": "latency"}, {"name": "no_regression"}]
    policy = write_policy(tmp_path / "release.yaml", gates)
    code, output = report("production", "--policy", str(policy), "--out", str(out))
    assert code == 0, output
    page = out.read_text()
    assert "<img" not in page
    assert page.count("not recorded for this version") >= len(PLOTS)
    rows = tables(page)["Promotion gates"]
    assert row(rows, "latency")[1] == "n/a"  # v2 was promoted by a policy without a latency gate
    assert row(rows, "accuracy")[1] == "PASS"
    regression = row(rows, "no_regression")  # against v1, which v2 replaced, as at its promotion
    assert regression[1] == "PASS" and "production v1" in regression[5] and regression[4] == "0.01"


def test_unknown_version_and_bad_policy_are_user_errors(in_store: Store, tmp_path: Path) -> None:
    code, output = report("99", "--policy", str(in_store.root / "loose.yaml"))
    assert code == 3 and "99" in output
    bad = write_policy(tmp_path / "bad.yaml", [{"name": "no_such_gate"}])
    code, output = report("1", "--policy", str(bad))
    assert code == 2 and "no_such_gate" in output


def test_report_plots_are_the_ones_evaluate_logs() -> None:
    assert tuple(PLOTS) == PLOT_FILES


def register_one(uri: str, model_dir: Path, plot: Path | None = None) -> str:
    """Version 1 of `restar` in the store at `uri` (optionally with one plot in its run); its run id."""
    with mlflow.start_run() as run:
        info = log_pyfunc(model_dir)
        if plot:
            mlflow.log_artifact(str(plot), "plots")
    Registry("restar", uri).register(info.model_uri, run.info.run_id, {}, {"eval_accuracy": 0.5})
    return run.info.run_id


def test_json_promotion_prints_one_document_and_still_logs_the_report(
    tracking_uri: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESTAR_AUDIT_DB_URL", raising=False)
    plot = tmp_path / "reliability.png"
    Image.new("RGB", (40, 30), "navy").save(plot)
    run_id = register_one(tracking_uri, tiny_model_dir, plot)
    policy = write_policy(tmp_path / "p.yaml", [{"name": "accuracy", "params": {"min": 0.1}}])
    result = promote("--version", "1", "--policy", str(policy), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["decision"] == "moved"  # no path, no progress bar in the way
    logged = [item.path for item in MlflowClient(tracking_uri).list_artifacts(run_id, "reports")]
    assert logged == ["reports/restar-v1.html"]
    page = (tmp_path / "outputs/reports/restar-v1.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and page.count("not recorded for this version") == 2


def test_a_failed_report_does_not_fail_the_move(
    tracking_uri: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESTAR_AUDIT_DB_URL", raising=False)
    register_one(tracking_uri, tiny_model_dir)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "reports").write_text("a file where the report folder should be")
    policy = write_policy(tmp_path / "p.yaml", [{"name": "accuracy", "params": {"min": 0.1}}])
    result = promote("--version", "1", "--policy", str(policy))
    assert result.exit_code == 0, result.output
    assert "WARNING: v1 moved, but its report failed" in result.output
    assert Registry("restar", tracking_uri).alias_version("production").version == 1


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(in_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "v1.html"
    assert report("1", "--policy", str(in_store.root / "loose.yaml"), "--out", str(out))[0] == 0
    shot = tmp_path / "out.png"
    command = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += [f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=True, cwd=tmp_path)
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # text, tables and plots, not a blank page
