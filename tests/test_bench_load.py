"""scripts/bench_load.py (scripts/bench/load/): its pure parts, and its wrk Lua script against a stub HTTP
server."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from restar.serving.json_requests import parse_body

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import bench_load  # noqa: E402

from bench.load.archive import stale_settings  # noqa: E402
from bench.load.bodies import decode_bodies, encode_bodies, hostile_bodies, mlflow_body, torchserve_body  # noqa: E402
from bench.load.kill import recovery_summary  # noqa: E402
from bench.load.soak import soak_growth  # noqa: E402
from bench.load.torchserve_view import parse_prometheus, parse_torchserve_log, prometheus_delta  # noqa: E402
from bench.load.wrk import WRK_MARKER, WrkRun, parse_wrk_output, summarize_wrk, wrk_command  # noqa: E402


def test_bodies_file_round_trips_any_bytes() -> None:
    bodies = [b"", b'{"text": "a\nb"}', b"\x00\xff\xfe", b"12\n34", b"x" * (1 << 20)]
    bodies += hostile_bodies().values()
    assert decode_bodies(encode_bodies(bodies)) == bodies


def test_good_bodies_escape_what_json_must() -> None:
    text = 'She said "no"\n\\ \x01 caf\u00e9 \U0001f525 \ud800'
    for body, unwrap in (
        (torchserve_body(text), lambda d: d["text"]),
        (mlflow_body(text), lambda d: d["dataframe_records"][0]["text"]),
    ):
        body.decode("ascii")  # ensure_ascii: no raw control characters or non-ASCII bytes on the wire
        assert unwrap(json.loads(body)) == text


@pytest.mark.parametrize("name", sorted(hostile_bodies()))
def test_every_hostile_body_breaks_the_request_contract(name: str) -> None:
    """The handler's parser refuses each one with a 4xx (TorchServe refuses the > 1 MiB one itself)."""
    parsed = parse_body(hostile_bodies()[name])
    assert 400 <= parsed.status < 500 and parsed.error


def raw_wrk(**overrides) -> dict:
    raw = {
        "requests": 100,
        "duration_us": 2_000_000,
        "bytes": 1,
        "latency_us": {
            "min": 1000,
            "mean": 20500.0,
            "max": 90000,
            "stdev": 1.0,
            "percentiles": {"50": 20000, "90": 30000, "95": 40000, "99": 80000, "99.9": 90000},
        },
        "statuses": {"200": 95, "400": 3, "503": 2},
        "valid_2xx": 94,
        "invalid_2xx": 1,
        "errors": {"connect": 0, "read": 1, "write": 0, "status": 5, "timeout": 2},
    }
    return {**raw, **overrides}


def test_parse_wrk_output_finds_the_result_line() -> None:
    result_line = WRK_MARKER + json.dumps(raw_wrk())
    stdout = f"Running 2s test @ http://x\n{result_line}\nLatency ...\n"
    assert parse_wrk_output(stdout) == raw_wrk()
    with pytest.raises(ValueError, match="RESTAR_WRK_RESULT"):
        parse_wrk_output("Running 2s test\n")


def test_summary_counts_non_2xx_socket_errors_and_bad_bodies_as_failed() -> None:
    level = summarize_wrk(raw_wrk(), clients=8)
    assert (level["status_2xx"], level["status_4xx"], level["status_5xx"]) == (95, 3, 2)
    assert level["ok"] == 94  # one 2xx lacked the expected body
    assert level["failed"] == 103 - 94  # 100 answered + 1 read error + 2 timeouts, 94 good
    assert level["failed_ratio"] == round(9 / 103, 5)
    assert level["ok_rps"] == 47.0 and level["rps"] == 50.0
    assert (level["latency_p50_ms"], level["latency_p99_ms"]) == (20.0, 80.0)


def test_recovery_window_is_the_outage_after_the_kill() -> None:
    records = [(t / 10, t / 10 + 0.05, 200) for t in range(50)]  # steady 200s until 5 s
    records += [(4.9, 5.2, 507), (4.95, 5.2, 507)]  # the batch in flight when the worker died
    records += [(5.0 + i / 100, 8.0, 200) for i in range(20)]  # queued, answered by the new worker
    records += [(8.0 + t / 10, 8.05 + t / 10, 200) for t in range(20)]
    summary = recovery_summary(records, kill_at=5.1)
    assert summary["recovered"] and summary["recovery_s"] == pytest.approx(2.9)
    assert summary["failed"] == 2 and summary["failed_statuses"] == {"507": 2}
    assert summary["recovery_window_failed"] == 2
    assert summary["recovery_window_requests"] == 2 + 20  # in flight between 5.1 s and 8.0 s
    # a second worker answers throughout: recovery lasts until the replacement has loaded its model
    others = [(t / 10, t / 10 + 0.05, 200) for t in range(120)] + [(4.9, 5.2, 507)]
    two = recovery_summary(others, kill_at=5.1, ready_at=11.0)
    assert two["recovery_s"] == pytest.approx(5.9) and two["worker_ready_s"] == pytest.approx(5.9)
    assert two["recovery_window_failed"] == 1 and two["recovery_window_requests"] == 1 + 59
    unrecovered = recovery_summary([(0.0, 0.1, 200), (0.5, 1.0, -1)], kill_at=0.4)
    assert unrecovered["recovered"] is False and unrecovered["failed_ratio"] == 0.5


def test_soak_growth_compares_first_and_last_windows() -> None:
    samples = [(float(t), 1000.0 if t < 300 else 1060.0) for t in range(0, 600, 5)]
    growth = soak_growth(samples, warmup_s=30, window_s=60)
    assert growth["first_window_mean_mb"] == 1000.0 and growth["last_window_mean_mb"] == 1060.0
    assert growth["growth_ratio"] == pytest.approx(0.06)
    with pytest.raises(ValueError, match="too short"):
        soak_growth([(0.0, 1.0), (1.0, 1.0)], warmup_s=30, window_s=60)


def test_torchserve_counters_and_log_lines() -> None:
    labels = '{model_name="restar",model_version="default",hostname="vm",}'
    metrics = (
        "# TYPE ts_inference_requests_total counter\n"
        f"ts_inference_requests_total{labels} 10.0\n"
        f"ts_inference_latency_microseconds{labels} 200000.0\n"
        f"ts_queue_latency_microseconds{labels} 50000.0\n"
        'HandlerTime{ModelName="restar",Level="Model",Hostname="vm",} 7.99\n'
    )
    after = parse_prometheus(metrics)
    assert "HandlerTime" not in after
    delta = prometheus_delta({}, after)
    assert delta == {"requests": 10, "mean_inference_latency_ms": 20.0, "mean_queue_latency_ms": 5.0}
    line = "W-9000-restar_5-stdout org.pytorch.serve.wlm.WorkerLifeCycle - result=[METRICS]{}|#Model\n"
    log = (
        line.format("HandlerTime.Milliseconds:8.0")
        + line.format("PredictionTime.Milliseconds:9.0")
        + "org.pytorch.serve.job.RestJob - Waiting time ns: 5000000, Backend time ns: 12000000\n" * 2
    )
    parsed = parse_torchserve_log(log)
    assert parsed == {
        "waiting_ms_p50": 5.0,
        "backend_ms_p50": 12.0,
        "handler_ms_p50": 8.0,
        "prediction_ms_p50": 9.0,
        "mean_batch_size": 2.0,
    }


def test_an_archive_with_other_batching_settings_is_named(tmp_path: Path) -> None:
    import zipfile

    shipped = (REPO_ROOT / "torchserve" / "model-config.yaml").read_text()
    current, stale = tmp_path / "current.mar", tmp_path / "stale.mar"
    for mar, config in ((current, shipped), (stale, shipped.replace("batchSize: 32", "batchSize: 16"))):
        with zipfile.ZipFile(mar, "w") as archive:
            archive.writestr("model-config.yaml", config)
    assert stale_settings(current) is None
    message = stale_settings(stale)
    assert message is not None and "'batchSize': 16" in message and "re-export" in message


def test_missing_wrk_fails_with_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="apt-get install -y wrk"):
        bench_load.main(["--wrk", str(tmp_path / "no-wrk"), "--output", str(tmp_path / "load.json")])


class StubHandler(BaseHTTPRequestHandler):
    """200 with a label for a JSON object with a string text, 400 for anything else; records bodies."""

    protocol_version = "HTTP/1.1"  # keep-alive, as wrk's connections are
    received: ClassVar[list[tuple[bytes, str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((body, self.headers.get("Authorization")))
        parsed = parse_body(body)
        status, answer = (200, {"label": "positive"}) if parsed.status == 200 else (400, {"error": "no"})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[str]:
    StubHandler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predictions/restar"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_lua_script_sends_every_body_byte_exact_and_counts_answers(
    stub_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [torchserve_body(text) for text in ("Love it", "Broke \U0001f525", 'a "b"\n')]
    hostile = [body for name, body in hostile_bodies().items() if name != "over_1_mib"]
    bodies = good + hostile
    bodies_file = tmp_path / "bodies.bin"
    bodies_file.write_bytes(encode_bodies(bodies))
    command = wrk_command("wrk", stub_server, bodies_file, 2, 1, expect='"label"', timeout_s=5)
    raw = WrkRun(command, token="secret-key").result(timeout=60)

    received = StubHandler.received
    assert len(received) >= len(bodies)  # one second covers the whole rotation
    assert {body for body, _ in received} == set(bodies)
    assert {auth for _, auth in received} == {"Bearer secret-key"}
    level = summarize_wrk(raw, clients=2)
    assert level["status_2xx"] + level["status_4xx"] == raw["requests"] and level["status_5xx"] == 0
    assert level["invalid_2xx"] == 0 and level["ok"] == level["status_2xx"] > 0
    share = len(hostile) / len(bodies)
    assert level["status_4xx"] / raw["requests"] == pytest.approx(share, abs=0.05)
    assert 0 < level["latency_p50_ms"] <= level["latency_p99_ms"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_every_phase_end_to_end_on_the_tiny_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second or a few of each TorchServe phase (mlflow models serve runs the same level code, and
    its start alone would double the test's time): the report holds every number and plot."""
    import pandas as pd

    from tests.served import register_production

    monkeypatch.setenv("MLFLOW_TRACKING_URI", register_production(tiny_model_dir, tmp_path))
    monkeypatch.chdir(tmp_path)
    texts = ["Love it, works perfectly.", "Broke after a day.", "It is okay.", "Great value \U0001f525"]
    pd.DataFrame({"text": texts * 5}).to_parquet(tmp_path / "eval.parquet")
    output = tmp_path / "bench" / "load.json"

    report = bench_load.main(
        ["--output", str(output), "--data", str(tmp_path / "eval.parquet"), "--texts", "20",
         "--servers", "torchserve", "--levels", "1", "4", "--seconds", "2", "--warmup-seconds", "1",
         "--pause", "0.2",
         "--poison-clients", "4", "--soak-seconds", "3", "--soak-clients", "2", "--soak-interval", "0.2",
         "--kill-clients", "4", "--kill-seconds", "6",
         "--pair-rounds", "2", "--pair-seconds", "1", "--pair-predictor-rows", "20",
         "--pair-pyfunc-calls", "5",
         "--pyfunc-calls", "10", "--pyfunc-warmup", "2", "--predictor-rows", "20"]
    )  # fmt: skip

    assert json.loads(output.read_text()) == report
    assert report["model"]["version"] == 1 and report["model"]["base_model"] is None
    torchserve = report["servers"]["torchserve"]
    assert [level["clients"] for level in torchserve["levels"]] == [1, 4]
    for level in torchserve["levels"]:
        assert level["ok"] > 0 and level["failed"] == 0 and level["rss_peak_mb_by_role"]["worker"] > 0
    shipped = yaml.safe_load((REPO_ROOT / "torchserve" / "model-config.yaml").read_text())
    assert torchserve["registry_version"] == 1 and torchserve["model_config"] == shipped
    assert torchserve["levels"][0]["torchserve_log"]["handler_ms_p50"] > 0
    assert all(400 <= probe["status"] < 500 for probe in torchserve["hostile_probe"].values())
    poison = torchserve["poison"]
    assert (
        poison["failed_good_requests"] == 0
        and poison["hostile_5xx"] == 0
        and poison["hostile"]["requests"] > 0
    )
    kill = torchserve["worker_kill"]
    assert kill["recovered"] and 0 < kill["worker_respawned_s"] < kill["worker_ready_s"] <= kill["recovery_s"]
    assert torchserve["via"] == "gateway" and kill["failed"] == 0  # the gateway resent the lost batch
    assert torchserve["soak"]["rss_growth"]["first_window_mean_mb"] > 0
    paired = torchserve["paired"]
    assert len(paired["rounds"]) == 2 and all(pair["failed"] == 0 for pair in paired["rounds"])
    ratios = sorted(pair["rps_ratio"] for pair in paired["rounds"])
    assert paired["rps_ratio_median"] == pytest.approx(sum(ratios) / 2, abs=1e-3)
    assert report["targets"]["rps_32_clients_over_predictor"]["value"] == paired["rps_ratio_median"]
    assert set(report["targets"]) == {
        "p50_1_client_over_pyfunc_p50",
        "rps_32_clients_over_predictor",
        "poison_failed_good_requests",
        "soak_rss_growth",
        "worker_kill_failed_ratio_run",
        "worker_kill_failed_ratio_recovery_window",
    }
    for suffix in (".png", "_soak.png", "_kill.png"):
        assert output.with_name(f"load{suffix}").stat().st_size > 0
