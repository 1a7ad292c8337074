"""The run's verdicts against its targets, the summary table, and the plot of latency and throughput
against clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.common import client_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TARGET_P50_RATIO = 1.3  # endpoint p50 at 1 client <= this x pyfunc batch-1 p50
TARGET_RPS_RATIO = 0.7  # endpoint req/s at 32 clients >= this x predictor reviews/s
TARGET_SOAK_GROWTH = 0.10
TARGET_RECOVERY_FAILED = 0.01


def level_at(server: dict | None, clients: int) -> dict | None:
    if not server:
        return None
    return next((level for level in server.get("levels", []) if level["clients"] == clients), None)


def targets(report: dict) -> dict:
    """The efficiency, poison, soak and recovery targets, each with its measured value and verdict."""
    torchserve = report["servers"].get("torchserve") or {}
    out = efficiency_targets(torchserve, report.get("baselines", {}))
    if "poison" in torchserve:
        out["poison_failed_good_requests"] = poison_target(torchserve["poison"])
    if "soak" in torchserve:
        out["soak_rss_growth"] = soak_target(torchserve["soak"])
    if "worker_kill" in torchserve:
        out.update(kill_targets(torchserve["worker_kill"]))
    return out


def efficiency_targets(torchserve: dict, baselines: dict) -> dict:
    """Endpoint p50 at 1 client over the pyfunc's, endpoint req/s at 32 clients over the predictor's:
    the medians of the paired rounds when there are any, else the levels against the opening baselines."""
    one, many = level_at(torchserve, 1), level_at(torchserve, 32)
    pyfunc = baselines.get("pyfunc_batch1")
    predictor = baselines.get("predictor")
    paired = torchserve.get("paired")
    p50_ratio = rps_ratio = None
    if paired:
        p50_ratio, rps_ratio = paired["p50_ratio_median"], paired["rps_ratio_median"]
    else:
        if one and pyfunc:
            p50_ratio = one["latency_p50_ms"] / pyfunc["latency_p50_ms"]
        if many and predictor:
            rps_ratio = many["ok_rps"] / predictor["reviews_per_s"]
    measured = "median of paired rounds" if paired else "levels against the opening baselines"
    out: dict = {}
    if p50_ratio is not None:
        out["p50_1_client_over_pyfunc_p50"] = {
            "value": round(p50_ratio, 3),
            "target": f"<= {TARGET_P50_RATIO}",
            "pass": p50_ratio <= TARGET_P50_RATIO,
            "measured": measured,
        }
    if rps_ratio is not None:
        out["rps_32_clients_over_predictor"] = {
            "value": round(rps_ratio, 3),
            "target": f">= {TARGET_RPS_RATIO}",
            "pass": rps_ratio >= TARGET_RPS_RATIO,
            "measured": measured,
        }
    return out


def poison_target(poison: dict) -> dict:
    return {
        "value": poison["failed_good_requests"],
        "target": "== 0",
        "pass": poison["failed_good_requests"] == 0 and poison["hostile_5xx"] == 0,
        "hostile_5xx": poison["hostile_5xx"],
    }


def soak_target(soak: dict) -> dict:
    growth = soak["rss_growth"]["growth_ratio"]
    return {"value": growth, "target": f"< {TARGET_SOAK_GROWTH}", "pass": growth < TARGET_SOAK_GROWTH}


def kill_targets(kill: dict) -> dict:
    """The whole kill run (kill and recovery inside it), and strictly the requests in flight between
    the kill and the first answer after the outage."""
    recovered = bool(kill["recovered"])
    window = kill.get("recovery_window_failed_ratio")
    return {
        "worker_kill_failed_ratio_run": {
            "value": kill["failed_ratio"],
            "target": f"< {TARGET_RECOVERY_FAILED}",
            "pass": recovered and kill["failed_ratio"] < TARGET_RECOVERY_FAILED,
            "recovery_s": kill.get("recovery_s"),
        },
        "worker_kill_failed_ratio_recovery_window": {
            "value": window,
            "target": f"< {TARGET_RECOVERY_FAILED}",
            "pass": recovered and window is not None and window < TARGET_RECOVERY_FAILED,
            "failed": kill.get("recovery_window_failed"),
            "requests": kill.get("recovery_window_requests"),
        },
    }


def print_summary(report: dict) -> None:
    print(
        f"\n{'server':>10} {'clients':>7} {'req/s':>7} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'failed':>8} {'RSS MiB':>8}"
    )
    for name, server in report["servers"].items():
        for level in server.get("levels", []):
            print(
                f"{name:>10} {level['clients']:>7} {level['ok_rps']:>7.1f} {level['latency_p50_ms']:>7.1f} "
                f"{level['latency_p95_ms']:>7.1f} {level['latency_p99_ms']:>7.1f} "
                f"{level['failed_ratio']:>8.2%} {level['rss_peak_mb']:>8}"
            )
    baselines = report.get("baselines", {})
    if baselines:
        pyfunc, predictor = baselines.get("pyfunc_batch1", {}), baselines.get("predictor", {})
        print(
            f"baselines: pyfunc batch-1 p50 {pyfunc.get('latency_p50_ms')} ms, "
            f"predictor {predictor.get('reviews_per_s')} reviews/s"
        )
    for name, target in report["targets"].items():
        verdict = "PASS" if target["pass"] else "FAIL"
        print(f"{verdict}  {name}: {target['value']} (target {target['target']})")


def plot_levels(report: dict) -> Figure:
    """Latency and throughput against clients per server, with the baselines and their targets."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    latency_ax, throughput_ax = fig.subplots(1, 2)
    plot_servers(report["servers"], latency_ax, throughput_ax)
    plot_baselines(report.get("baselines", {}), latency_ax, throughput_ax)
    client_axes(
        ((latency_ax, "Latency", "ms"), (throughput_ax, "Throughput (2xx)", "requests/s")),
        xlabel="concurrent clients (wrk connections)",
    )
    latency_ax.set_yscale("log")
    hw = report["hardware"]
    fig.suptitle(
        f"{report['model']['uri']} (v{report['model']['version']}, {report['model']['base_model']}); "
        f"{hw['cpu']}, {hw['cpu_count']} cores; {report['seconds_per_level']:g} s per level",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def plot_servers(servers: dict, latency_ax: Axes, throughput_ax: Axes) -> None:
    """Each server's p50, p95 and p99 latency and its 2xx req/s, against clients."""
    colors = {"torchserve": "tab:blue", "mlflow": "tab:orange"}
    for name, server in servers.items():
        levels = server.get("levels") or []
        if not levels:
            continue
        clients = [level["clients"] for level in levels]
        color = colors.get(name)
        for key, style, marker in (("p50", "-", "o"), ("p95", "--", "x"), ("p99", ":", "^")):
            latency_ax.plot(
                clients,
                [level[f"latency_{key}_ms"] for level in levels],
                linestyle=style,
                marker=marker,
                color=color,
                label=f"{name} {key}",
            )
        throughput_ax.plot(
            clients, [level["ok_rps"] for level in levels], marker="o", color=color, label=name
        )


def plot_baselines(baselines: dict, latency_ax: Axes, throughput_ax: Axes) -> None:
    """The pyfunc's batch-1 p50 and the predictor's reviews/s as lines, each with its target."""
    if "pyfunc_batch1" in baselines:
        p50 = baselines["pyfunc_batch1"]["latency_p50_ms"]
        baseline_lines(latency_ax, p50, f"pyfunc batch-1 p50 {p50:.1f} ms", TARGET_P50_RATIO, "1 client")
    if "predictor" in baselines:
        rps = baselines["predictor"]["reviews_per_s"]
        baseline_lines(
            throughput_ax, rps, f"offline predictor {rps:.0f} reviews/s", TARGET_RPS_RATIO, "32 clients"
        )


def baseline_lines(ax: Axes, value: float, label: str, ratio: float, where: str) -> None:
    """A baseline as a grey line, and its target (`ratio` times it) dashed."""
    ax.axhline(value, color="gray", linewidth=0.8, label=label)
    ax.axhline(
        ratio * value, color="gray", linestyle="--", linewidth=0.8, label=f"target at {where} ({ratio} x)"
    )
