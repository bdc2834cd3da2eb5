"""Command line: thin wrappers over the library; each command's docstring shows an example."""

from __future__ import annotations

import sys

import click

from sentinel import __version__
from sentinel.errors import SentinelError


class _Group(click.Group):
    """Reports SentinelError as one clean line (with its location) and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SentinelError as exc:
            click.echo("sentinel: error: %s" % exc, err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sentinel")
def main() -> None:
    """sentinel: eBPF sensors, Falco rules and in-kernel enforcement."""


if __name__ == "__main__":
    main()
