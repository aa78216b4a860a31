"""The ``flotilla`` command."""

from flotilla.cli.app import app, main

__all__ = ["app", "main"]
