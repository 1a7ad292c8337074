"""The `restar` command line: one module per command group, each command a thin call into restar/.

`pipeline` holds the stages dvc.yaml runs; `predict`, `bench`, `report`, `serve`, `follow` and `business`
(rank-eval, inconsistencies) one concern each; `options` the options several commands share. `restar
registry` comes from registry.cli. Heavy modules load inside the commands only, so `restar --help` stays
fast.
"""

from __future__ import annotations

import logging

import click

from registry.cli import registry_group
from restar.cli import business, pipeline
from restar.cli.bench import bench_command
from restar.cli.follow import follow_command
from restar.cli.output import LOG_FORMAT
from restar.cli.predict import predict_command
from restar.cli.report import report_command
from restar.cli.serve import serve_group
from restar.progress import quiet_unless_terminal

__all__ = ["cli"]


@click.group()
@click.version_option(package_name="restar")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Re*Star: re-star product reviews with a calibrated, abstaining transformer.

    \b
    Example, the whole smoke pipeline:
        dvc repro
    Example, predictions for a CSV with a `text` column:
        restar predict --input reviews.csv --output out.parquet --model-uri models:/restar@production
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    quiet_unless_terminal()


for command in (
    *pipeline.COMMANDS,
    predict_command,
    bench_command,
    report_command,
    serve_group,
    registry_group,
    follow_command,
    *business.COMMANDS,
):
    cli.add_command(command)
