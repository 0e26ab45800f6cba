"""The demo report: measure the mission's claims on built-in synthetic data and write index.html,
results.json and PNG figures (`atrous demo`). See `atrous.report.experiment` for what is trained and
measured and `atrous.report.claims` for the claims and their verdict rules."""

from atrous.report.demo import run_demo

__all__ = ["run_demo"]
