"""`restar rank-eval` and `restar inconsistencies`: the business questions of issue 25 on the command line.

Thin commands over restar.report.rank_eval and restar.report.inconsistencies, with the same options,
errors and exit codes as `restar predict`: 0 done, 1 unusable input, split folder or model, 2 bad usage, 3
registry problem, 6 an output could not be written (nothing is left). Heavy modules (pandas, torch,
MLflow, matplotlib) load inside the commands, so `restar --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from registry.cli import table
from restar.cli.errors import user_errors
from restar.cli.options import FILE, FOLDER, json_option, model_uri_option, out_file_option

if TYPE_CHECKING:
    from restar.report.rank_eval import RankEvalResult


def input_option(command: Callable) -> Callable:
    """`--input`: the reviews file both business commands read."""
    return click.option(
        "--input",
        "input_path",
        type=FILE,
        required=True,
        help="Reviews: .jsonl, .jsonl.gz, .csv or .parquet (upstream Amazon Reviews schema).",
    )(command)


@click.command("rank-eval")
@input_option
@model_uri_option
@click.option(
    "--frozen",
    "frozen_dir",
    type=FOLDER,
    default="data/frozen",
    show_default=True,
    help="Frozen split folder: only its dev+eval products are scored, never the training ones.",
)
@click.option(
    "--no-split-filter",
    is_flag=True,
    help="Score every product of the input (a file outside the frozen data, e.g. the 2018 magazines).",
)
@click.option(
    "--min-reviews",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="Reviews a product needs in total to qualify.",
)
@click.option(
    "--observed-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of each product's reviews, oldest first, known at ranking time; the rest is the outcome.",
)
@click.option(
    "--prior-weight",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Pseudo-reviews at the category mean in every Bayesian average.",
)
@click.option(
    "--k",
    "ks",
    type=click.IntRange(min=1),
    multiple=True,
    default=(1, 3, 5, 10),
    show_default=True,
    help="Shelf sizes to report (repeatable); the largest decides the verdict.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Bootstrap draws (products resampled within category) for the 95% intervals.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--min-products",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Fewest ranked products (in categories of 2 or more) for a verdict other than 'too few'.",
)
@out_file_option(
    "Result JSON (aggregates only); the PNG plot is written beside it. Both written atomically.",
    "outputs/rank_eval/rank_eval.json",
)
@json_option
@user_errors
def rank_eval_command(
    input_path: Path,
    model_uri: str,
    frozen_dir: Path,
    no_split_filter: bool,
    min_reviews: int,
    observed_fraction: float,
    prior_weight: float,
    ks: tuple[int, ...],
    bootstrap: int,
    seed: int,
    min_products: int,
    out_path: Path,
    as_json: bool,
) -> None:
    """Offline ranking A/B: do rankings built on the model's reading of review text bounce fewer shoppers
    than star rankings?

    Per product, older reviews rank it (stars: control; text score and re-starred stars: treatments) and
    newer reviews' share of <= 2 stars is the bounce risk of a visit. Prints the verdict and the bounce
    rate by k with bootstrap 95% intervals; writes OUT (JSON) and the plot beside it.

    \b
    Example, the frozen split's held-out products:
        restar rank-eval --input ../shared/data/amazon_reviews_2023/Subscription_Boxes.jsonl.gz
    Example, a file outside the frozen data:
        restar rank-eval --no-split-filter --input Magazine_Subscriptions_5.jsonl.gz --out mags.json
    """
    from restar.report.rank_eval import (
        RankEvalSettings,
        check_output_path,
        rank_eval_file,
        write_rank_eval,
    )

    settings = RankEvalSettings(
        observed_fraction=observed_fraction,
        min_reviews=min_reviews,
        prior_weight=prior_weight,
        ks=ks,
        bootstrap=bootstrap,
        seed=seed,
        min_products=min_products,
    )
    check_output_path(out_path)  # a bad output name fails before the model loads
    result = rank_eval_file(input_path, model_uri, settings, None if no_split_filter else frozen_dir)
    png_path = write_rank_eval(result, out_path)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(rank_eval_text(result))
    click.echo(f"wrote {out_path} and {png_path}", err=as_json)


def rank_eval_text(result: RankEvalResult) -> str:
    """The verdict, the counts that qualify it, and one line per k and arm."""
    counts = result.counts
    rows = []
    for k in result.settings.ks:
        for arm in result.arms:
            bounce = arm.bounce_pct[k]
            difference = arm.difference_pp.get(k)
            rows.append(
                [
                    k,
                    arm.name,
                    _number(bounce.value),
                    _span(bounce.low, bounce.high),
                    "" if difference is None else _number(difference.value),
                    "" if difference is None else _span(difference.low, difference.high),
                    _number(arm.ndcg[k], 3),
                ]
            )
    lines = [
        f"verdict: {result.verdict}"
        + (
            f" ({result.verdict_treatment}, k={result.settings.primary_k})"
            if result.verdict_treatment
            else ""
        ),
        f"products: {counts['products_qualified']} qualified, {counts['products_ranked']} ranked "
        f"(minimum {counts['min_products']}), dropped {counts['products_dropped']}",
        f"product filter: {result.product_filter}",
        table(["k", "arm", "bounce %", "95% CI", "vs control pp", "95% CI", "NDCG"], rows),
    ]
    return "\n".join(lines)


def _number(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN is the only value unequal to itself


def _span(low: float, high: float) -> str:
    return f"[{_number(low)}, {_number(high)}]"


@click.command("inconsistencies")
@input_option
@out_file_option(
    "Contradicting reviews, most confident first: .csv or .parquet, written atomically. It holds "
    "review texts: keep it out of the repository.",
    required=True,
)
@model_uri_option
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    default=None,
    help="Count a text class as confident from this top probability on [default: the model's abstention].",
)
@json_option
@user_errors
def inconsistencies_command(
    input_path: Path, out_path: Path, model_uri: str, min_confidence: float | None, as_json: bool
) -> None:
    """Reviews whose confident text class contradicts their stars (4-5 stars on negative text, 1-2 stars
    on positive text; neutral never counts), with contradiction rates per category.

    \b
    Example: restar inconsistencies --input reviews.jsonl.gz --out contradictions.csv
    """
    from restar.batch.predictor import load_predict_fn
    from restar.report.inconsistencies import (
        REQUIRED_COLUMNS,
        check_output_path,
        find_inconsistencies,
        read_reviews,
        write_contradictions,
    )

    check_output_path(out_path)
    frame = read_reviews(input_path, REQUIRED_COLUMNS)  # input problems surface before the model loads
    result = find_inconsistencies(frame, load_predict_fn(model_uri), min_confidence)
    written = write_contradictions(result, out_path)
    summary = result.summary()
    if as_json:
        rows = summary.astype(object).where(summary.notna(), None).to_dict("records")  # NaN is not JSON
        click.echo(json.dumps({"counts": result.counts, "per_category": rows}, indent=2))
    else:
        click.echo(summary.to_string(index=False))
    click.echo(f"wrote {written} contradictions to {out_path}", err=as_json)


COMMANDS = (rank_eval_command, inconsistencies_command)
