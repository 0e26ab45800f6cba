"""The demo report: measure the mission's claims through the product (models trained by the training engine
from configs, scored by `atrous.evaluate`) on synthetic and real data, and write index.html, results.json
and PNG figures (`atrous demo`). `atrous.report.plan` says what is trained, `atrous.report.claims` the
claims and their verdict rules, `atrous.report.evidence` where each claim's numbers come from."""

from atrous.report.demo import run_demo

__all__ = ["run_demo"]
