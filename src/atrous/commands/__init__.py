"""Subcommands of the `atrous` CLI, one module each (see atrous.cli)."""
