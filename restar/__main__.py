"""`python -m restar`: the `restar` command line."""

from restar.cli import cli

if __name__ == "__main__":
    cli(prog_name="restar")
