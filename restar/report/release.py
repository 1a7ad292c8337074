"""`restar report VERSION`: one self-contained HTML page about one registered version.

Gates (the policy's own gate classes, run by promotion's `run_gates`), metrics, the evaluate stage's
plots fetched from the version's run, the latency the latency gate recorded, lineage, and the audit
history. Images are inlined as data URIs and the CSS is inline: the page makes no request.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import mlflow
from mlflow.exceptions import MlflowException
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from promotion.gates import RANK_EVAL_ARTIFACT_DIR, GateResult, LatencyGate, RankEvalGate
from promotion.policy import Policy, build_gates
from promotion.promote import run_gates
from registry.audit import AuditLog, AuditRecord
from registry.errors import VersionNotFound
from registry.service import Registry, VersionInfo
from restar.model.determinism import TOLERANCE
from restar.output_files import atomic_file, write_error

REPORT_DIR = Path("outputs/reports")
# The evaluate stage's plots (restar.training.evaluate.PLOT_FILES), logged to the run under `plots/`.
PLOTS = {
    "confusion_matrix.png": "Confusion matrix (eval, argmax before abstention)",
    "risk_coverage.png": "Risk-coverage (eval)",
    "reliability.png": "Reliability before and after calibration (eval)",
}
PLOT_ARTIFACT_DIR = "plots"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# Gates that time the model instead of reading the version: the report shows what they recorded at
# promotion (the audit log) and runs them only when asked, since a run takes minutes.
MEASURED_GATES = (LatencyGate, RankEvalGate)  # timed or scored: shown as recorded unless measured again
LINEAGE_TAGS = {
    "restar.config": "config",
    "restar.model": "model",
    "restar.git": "git commit",
    "restar.data": "data",
}

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>$title</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#1d232b;padding:0 16px}
h1{font-size:22px;margin-bottom:2px}
h2{font-size:17px;border-bottom:1px solid #d5dae0;padding-bottom:3px;margin-top:26px}
.sub{color:#5b6673;margin-top:0}table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #d5dae0;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f4f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px;word-break:break-all}
.PASS{color:#0a7a2f;font-weight:600}.FAIL{color:#b3261e;font-weight:600}.NA{color:#5b6673}
.plots{display:flex;flex-wrap:wrap;gap:14px}figure{margin:0}
figure img{max-width:340px;border:1px solid #d5dae0}
figcaption{font-size:12px;color:#5b6673;max-width:340px}.missing{color:#5b6673;font-style:italic}
</style></head><body>
<h1>$title</h1>
<p class="sub">$subtitle</p>
$sections
</body></html>
""")


@dataclass(frozen=True)
class GateRow:
    result: GateResult
    source: str  # "evaluated now", "recorded <time> (<action>)" or "not recorded for this version"
    recorded: bool = True


def esc(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def when(moment: datetime) -> str:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite drops the zone
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """`rows` hold HTML already escaped; numbers align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{_cell_class(cell)}>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _cell_class(cell: str) -> str:
    try:
        float(cell)
    except ValueError:
        return ""
    return ' class="num"'


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def audit_records(audit: AuditLog, model_name: str, version: int) -> list[AuditRecord]:
    """Every decision about `version` or away from it (previous_version), oldest first."""
    query = (
        select(AuditRecord)
        .where(AuditRecord.model_name == model_name)
        .where(or_(AuditRecord.version == version, AuditRecord.previous_version == version))
        .order_by(AuditRecord.id)
    )
    with Session(audit.engine, expire_on_commit=False) as session:
        return list(session.scalars(query))


def recorded_gate(name: str, version: int, records: Sequence[AuditRecord]) -> GateRow | None:
    """The newest audit result of gate `name` on `version`."""
    for record in reversed(records):
        if record.version != version:
            continue
        for result in record.gate_results or []:
            if result.get("gate") == name:
                known = {field.name for field in fields(GateResult)}  # older records lack newer ones
                gate = GateResult(**{key: value for key, value in result.items() if key in known})
                return GateRow(gate, f"recorded {when(record.created_at)} ({record.action})")
    return None


def baseline(
    registry: Registry, policy: Policy, version: VersionInfo, records: Sequence[AuditRecord]
) -> VersionInfo | None:
    """What gates compare `version` with: the alias holder, or for the holder itself the version its
    last move replaced (as at its promotion)."""
    holder = registry.alias_version(policy.alias)
    if holder is None or holder.version != version.version:
        return holder
    moves = [r for r in records if r.version == version.version and r.alias == policy.alias]
    replaced = next((r.previous_version for r in reversed(moves) if r.decision == "moved"), None)
    if replaced is None:
        return holder
    try:
        return registry.version(replaced)
    except VersionNotFound:  # deleted since
        return holder


def gate_rows(
    registry: Registry,
    policy: Policy,
    version: VersionInfo,
    records: Sequence[AuditRecord],
    measure: bool = False,
) -> list[GateRow]:
    """The policy's gates on `version`, in policy order: evaluated now, except measured gates, which
    show their recorded result unless `measure`."""
    gates = build_gates(policy)
    live = [gate for gate in gates if measure or not isinstance(gate, MEASURED_GATES)]
    compared_with = baseline(registry, policy, version, records)
    results = dict(zip(map(id, live), run_gates(live, version, compared_with), strict=True))
    rows = []
    for gate in gates:
        if id(gate) in results:
            rows.append(GateRow(results[id(gate)], "evaluated now"))
            continue
        missing = GateRow(
            GateResult(gate.name, False, None, None, "", gate.higher_is_better),
            "not recorded for this version (restar report --measure-latency runs it)",
            recorded=False,
        )
        rows.append(recorded_gate(gate.name, version.version, records) or missing)
    return rows


def gates_section(policy: Policy, version: VersionInfo, rows: Sequence[GateRow]) -> str:
    def status(row: GateRow) -> str:
        if not row.recorded:
            return '<span class="NA">n/a</span>'
        if row.result.inconclusive:
            return '<span class="NA">UNDECIDED</span>'
        verdict = "PASS" if row.result.passed else "FAIL"
        report_only = " (report only)" if row.result.advisory else ""
        return f'<span class="{verdict}">{verdict}</span>{report_only}'

    table = html_table(
        ["gate", "result", "value", "threshold", "margin", "detail", "source"],
        (
            [
                esc(row.result.gate),
                status(row),
                number(row.result.value),
                number(row.result.threshold),
                number(row.result.margin),
                esc(row.result.detail),
                esc(row.source),
            ]
            for row in rows
        ),
        cls="gates",
    )
    deciding = [row for row in rows if not (row.recorded and row.result.advisory)]
    verdict = "PASS" if all(row.recorded and row.result.passed for row in deciding) else "FAIL"
    intro = (
        f"<p>Policy <b>{esc(policy.name)}</b> for alias <code>{esc(policy.alias)}</code>: "
        f'<span class="{verdict}">{verdict}</span>. {esc(policy.description)}</p>'
    )
    promoted_under = version.tags.get(f"restar.{policy.alias}.policy")
    if promoted_under and promoted_under != policy.name:
        intro += (
            f"<p>The last {esc(policy.alias)} decision on this version used policy "
            f"<b>{esc(promoted_under)}</b>.</p>"
        )
    return section("Promotion gates", intro + table)


def metrics_section(version: VersionInfo) -> str:
    """One row per metric, the eval and dev splits side by side."""
    metrics, splits = version.metrics, ("eval", "dev")
    names = sorted({name.split("_", 1)[1] for name in metrics if name.split("_", 1)[0] in splits})
    rows = [[esc(name)] + [number(metrics.get(f"{split}_{name}")) for split in splits] for name in names]
    split_names = {f"{split}_{name}" for split in splits for name in names}
    rows += [
        [esc(name), number(value), ""] for name, value in sorted(metrics.items()) if name not in split_names
    ]
    body = html_table(["metric", *splits], rows) if rows else '<p class="missing">no metrics recorded</p>'
    return section("Metrics", body)


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bars on stderr for three small PNGs (restar-promote --json prints one document)."""
    previous = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = previous


def plot_images(registry: Registry, version: VersionInfo) -> dict[str, str]:
    """Each plot the version's run logged, as base64 PNG; plots it did not log are left out."""
    if not version.run_id:
        return {}
    logged = {item.path for item in registry.client.list_artifacts(version.run_id, PLOT_ARTIFACT_DIR)}
    images = {}
    with tempfile.TemporaryDirectory() as work, quiet_downloads():
        for name in PLOTS:
            artifact = f"{PLOT_ARTIFACT_DIR}/{name}"
            if artifact in logged:
                local = mlflow.artifacts.download_artifacts(
                    run_id=version.run_id,
                    artifact_path=artifact,
                    dst_path=work,
                    tracking_uri=registry.tracking_uri,
                )
                images[name] = base64.b64encode(Path(local).read_bytes()).decode("ascii")
    return images


def plots_section(registry: Registry, version: VersionInfo) -> str:
    try:
        images = plot_images(registry, version)
        missing = "not recorded for this version"
    except (MlflowException, OSError) as exc:  # the page still reports everything else
        images, missing = {}, f"could not be fetched from run {version.run_id}: {exc}"
    figures = []
    for name, caption in PLOTS.items():
        if name not in images:
            figures.append(f'<figure><p class="missing">{esc(name)}: {esc(missing)}</p></figure>')
            continue
        figures.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{images[name]}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    return section("Evaluation plots", f'<div class="plots">{"".join(figures)}</div>')


def latency_section(version: VersionInfo, records: Sequence[AuditRecord]) -> str:
    """What the latency gate measured each time it ran on this version (batch size 1, CPU)."""
    rows = [
        [
            esc(when(record.created_at)),
            esc(record.action),
            number(result.get("value")),
            esc(result.get("detail")),
        ]
        for record in records
        if record.version == version.version
        for result in record.gate_results or []
        if result.get("gate") == LatencyGate.name
    ]
    metrics = {name: value for name, value in version.metrics.items() if name.startswith("latency_")}
    body = html_table(["measured", "during", "avg ms", "profile"], rows) if rows else ""
    if metrics:
        body += html_table(["run metric", "value"], ([esc(k), number(v)] for k, v in sorted(metrics.items())))
    return section("Latency", body or '<p class="missing">no latency recorded for this version</p>')


def logged_rank_eval(registry: Registry, version: VersionInfo) -> tuple[dict, str] | None:
    """The business proxy the rank_eval gate logged to the version's run: its JSON and base64 PNG."""
    if not version.run_id:
        return None
    logged = {item.path for item in registry.client.list_artifacts(version.run_id, RANK_EVAL_ARTIFACT_DIR)}
    names = [f"{RANK_EVAL_ARTIFACT_DIR}/rank_eval.json", f"{RANK_EVAL_ARTIFACT_DIR}/rank_eval.png"]
    if not set(names) <= logged:
        return None
    with tempfile.TemporaryDirectory() as work, quiet_downloads():
        local = [
            Path(
                mlflow.artifacts.download_artifacts(
                    run_id=version.run_id,
                    artifact_path=name,
                    dst_path=work,
                    tracking_uri=registry.tracking_uri,
                )
            )
            for name in names
        ]
        return json.loads(local[0].read_text()), base64.b64encode(local[1].read_bytes()).decode("ascii")


def interval_text(found: dict) -> str:
    """`{"value": v, "ci95": [low, high]}` (restar.report.rank_eval's JSON; None where there was no data)."""
    value, (low, high) = found["value"], found["ci95"]
    if value is None:
        return "-"
    return f"{value:.2f}" if low is None else f"{value:.2f} [{low:.2f}, {high:.2f}]"


def business_section(registry: Registry, version: VersionInfo) -> str:
    """The offline ranking A/B (restar rank-eval): bounce by k per arm, the differences, the verdict."""
    try:
        found = logged_rank_eval(registry, version)
    except (MlflowException, OSError, ValueError) as exc:
        return section("Business proxy", f'<p class="missing">could not be fetched: {esc(exc)}</p>')
    if found is None:
        missing = (
            "not measured for this version (the policy's rank_eval gate logs it; or run restar rank-eval)"
        )
        return section("Business proxy", f'<p class="missing">{esc(missing)}</p>')
    result, image = found
    ks = list(next(iter(result["arms"].values()))["bounce_pct"])
    rows = []
    for name, arm in result["arms"].items():
        difference = arm.get("difference_pp", {}).get(str(result["primary_k"]))
        rows.append(
            [esc(name)]
            + [esc(interval_text(arm["bounce_pct"][k])) for k in ks]
            + [esc(interval_text(difference)) if difference else "-", esc(arm.get("verdict") or "-")]
        )
    headers = [
        "arm",
        *(f"bounce % k={k}" for k in ks),
        f"vs control, points (k={result['primary_k']})",
        "verdict",
    ]
    intro = (
        f"<p><b>{esc(result['verdict'])}</b>: {esc(result['counts']['products_qualified'])} products of "
        f"<code>{esc(result['input'])}</code> ({esc(result['product_filter'])}); 95% bootstrap intervals. "
        "The target: rankings on Re*Star bounce at least 2 points fewer shoppers.</p>"
    )
    figure = f'<figure><img alt="bounce rate by k" src="data:image/png;base64,{image}"></figure>'
    return section("Business proxy", intro + html_table(headers, rows) + figure)


DETERMINISM_ROWS = {
    "alone vs. in one batch of all, and in batches of 7 in reverse order": "determinism_batch_max_abs_diff",
    "in this process vs. in a fresh one on 1 thread": "determinism_process_max_abs_diff",
}


def determinism_section(version: VersionInfo) -> str:
    """What the evaluate stage measured of this version's answers: the same text, the same answer?"""
    metrics = version.metrics
    if "determinism_texts" not in metrics:
        return section("Determinism", '<p class="missing">not measured for this version</p>')
    rows = []
    for what, name in DETERMINISM_ROWS.items():
        diff = metrics.get(name, float("inf"))
        same = "yes" if diff <= TOLERANCE else f"no (over {TOLERANCE:g})"
        rows.append([esc(what), number(metrics.get(name)), esc(same)])
    intro = (
        "<p>The largest difference in any calibrated probability over "
        f"{int(metrics['determinism_texts'])} eval texts, from the shortest to the longest "
        "(restar/model/determinism.py).</p>"
    )
    table = html_table(["the same text scored", "max abs diff", "same answer"], rows)
    return section("Determinism", intro + table)


def lineage_section(version: VersionInfo) -> str:
    rows = [
        ["model", esc(version.name)],
        ["version", f"<code>{version.version}</code>"],
        ["aliases", esc(", ".join(version.aliases) or "none")],
        ["run id", f"<code>{esc(version.run_id)}</code>"],
        ["source", f"<code>{esc(version.source)}</code>"],
    ]
    rows += [
        [esc(label), f"<code>{esc(version.tags.get(tag))}</code>"] for tag, label in LINEAGE_TAGS.items()
    ]
    other = {k: v for k, v in version.tags.items() if k not in LINEAGE_TAGS}
    rows += [[esc(key), f"<code>{esc(value)}</code>"] for key, value in sorted(other.items())]
    if version.description:
        rows.append(["in full (the version's description)", f"<pre>{esc(version.description)}</pre>"])
    return section("Lineage", html_table(["field", "value"], rows))


def audit_section(version: int, records: Sequence[AuditRecord]) -> str:
    if not records:
        return section("Audit history", '<p class="missing">no promotion decision recorded</p>')

    def moved(record: AuditRecord) -> str:
        before = "none" if record.previous_version is None else f"v{record.previous_version}"
        return f"{before} &rarr; v{record.version}" if record.version != version else f"from {before}"

    rows = (
        [
            esc(when(r.created_at)),
            esc(r.action),
            esc(r.decision),
            esc(r.alias),
            moved(r),
            esc(r.actor),
            esc(r.reason),
        ]
        for r in reversed(records)
    )
    headers = ["time", "action", "decision", "alias", "move", "actor", "reason"]
    return section("Audit history", html_table(headers, rows, cls="audit"))


def render_report(
    registry: Registry, audit: AuditLog, policy: Policy, ref: int | str, measure_latency: bool = False
) -> tuple[VersionInfo, str]:
    """The version `ref` (number or alias) and its report page."""
    version = registry.version(ref)
    records = audit_records(audit, registry.model_name, version.version)
    sections = [
        gates_section(policy, version, gate_rows(registry, policy, version, records, measure_latency)),
        metrics_section(version),
        plots_section(registry, version),
        latency_section(version, records),
        determinism_section(version),
        business_section(registry, version),
        lineage_section(version),
        audit_section(version.version, records),
    ]
    subtitle = (
        f"aliases: {', '.join(version.aliases) or 'none'} &middot; registry {esc(registry.tracking_uri)} "
        f"&middot; generated {when(datetime.now(UTC))}"
    )
    page = PAGE.substitute(
        title=esc(f"{version.name} v{version.version}: release report"),
        subtitle=subtitle,
        sections="\n".join(sections),
    )
    return version, page


def write_report(
    registry: Registry,
    audit: AuditLog,
    policy: Policy,
    ref: int | str,
    out: Path | None = None,
    measure_latency: bool = False,
) -> Path:
    """Render the report of `ref` and write it (default outputs/reports/<model>-v<N>.html) whole."""
    version, page = render_report(registry, audit, policy, ref, measure_latency)
    path = out or REPORT_DIR / f"{version.name}-v{version.version}.html"
    with atomic_file(path) as handle:
        try:
            handle.write(page.encode("utf-8"))
        except OSError as exc:
            raise write_error(path, exc) from exc
    return path
