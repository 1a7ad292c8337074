"""`restar predict`: batch predictions for a file, in this process or on Spark."""

from __future__ import annotations

from pathlib import Path

import click

from restar.cli.errors import user_errors
from restar.cli.options import FILE, model_uri_option


def _spark_conf(pairs: tuple[str, ...]) -> dict[str, str]:
    """--conf values as a dict; anything but spark.<key>=<value> is a usage error."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("spark."):
            raise click.BadParameter(f"{pair!r}: expected spark.<key>=<value>", param_hint="--conf")
        conf[key] = value
    return conf


@click.command("predict")
@click.option(
    "--input",
    "input_path",
    type=FILE,
    required=True,
    help="CSV, Parquet or JSON Lines file with a `text` column.",
)
@click.option(
    "--output",
    "output_path",
    type=FILE,
    required=True,
    help="Where to write predictions (.csv, .parquet or .jsonl); written atomically.",
)
@model_uri_option
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Rows per model call."
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Rows read, predicted and written at a time (memory stays flat however long the input).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process, chunk by chunk. spark: mlflow.pyfunc.spark_udf on a Spark master.",
)
@click.option(
    "--master",
    envvar=["RESTAR_SPARK_MASTER", "SPARK_MASTER"],
    show_envvar=True,
    help="Spark master for --engine spark (local[*], spark://host:7077, yarn...); default: the --conf "
    "spark.master, else local[*].",
)
@click.option(
    "--conf",
    "spark_conf",
    multiple=True,
    metavar="KEY=VALUE",
    callback=lambda ctx, param, pairs: _spark_conf(pairs),
    help="A spark.* setting for --engine spark; repeatable.",
)
@user_errors
def predict_command(
    input_path: Path,
    output_path: Path,
    model_uri: str,
    batch_size: int,
    chunk_rows: int,
    engine: str,
    master: str | None,
    spark_conf: dict[str, str],
) -> None:
    """Predict label, confidence, p_neg, p_neu and p_pos for every input row.

    \b
    Example: restar predict --input reviews.csv --output predictions.parquet
    On Spark: restar predict --engine spark --master 'local[4]' --conf spark.driver.memory=4g \\
                  --input reviews.parquet --output predictions.parquet
    """
    if engine == "spark":
        from restar.batch.predictor import check_input_file, file_format
        from restar.batch.spark_predictor import predict_file_spark, spark_session

        check_input_file(input_path)  # bad paths fail before a JVM starts
        file_format(output_path)
        spark = spark_session(master, spark_conf)
        rows = predict_file_spark(
            input_path, output_path, model_uri, spark, batch_size=batch_size, chunk_rows=chunk_rows
        )
    else:
        from restar.batch.predictor import predict_file

        rows = predict_file(input_path, output_path, model_uri, batch_size=batch_size, chunk_rows=chunk_rows)
    click.echo(f"wrote {rows} predictions to {output_path}")
