"""`atrous demo`: the report renders in a real browser (Debian's chromium, headless, driven by playwright),
every image loads, the tables are there, and no request leaves the machine."""

import json
import struct
from pathlib import Path

import pytest

from atrous.cli import build_parser

CHROMIUM = "/usr/bin/chromium"


def test_demo_arguments():
    args = build_parser().parse_args(["demo"])
    assert (args.out, args.quick, args.seed, args.only) == ("demo-report", False, 0, None)
    args = build_parser().parse_args(
        ["demo", "--quick", "--seed", "3", "--out", "x", "--only", "pooling_limit_2k"]
    )
    assert (args.out, args.quick, args.seed, args.only) == ("x", True, 3, "pooling_limit_2k")


def test_only_reruns_one_claims_experiment(quick_demo, tmp_path, capsys):
    import shutil

    from atrous.cli import main
    from atrous.report import plan

    out = tmp_path / "report"
    shutil.copytree(quick_demo, out)
    scores = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/scores.json")}
    assert main(["demo", "--quick", "--out", str(out), "--only", "gridding_fails_texture"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["only"] == "gridding_fails_texture" and set(results["models"]) == set(plan.MODELS)
    rerun = {p for p, t in scores.items() if p.stat().st_mtime_ns != t}
    # exactly the gridding experiment's runs were trained again; every other model's scores were read back
    assert {p.parts[-3] for p in rerun} == set(plan.models_of("gridding")) == {"tex_gridded", "tex_hdc"}
    assert main(["demo", "--quick", "--out", str(out), "--only", "no_such_claim"]) == 2
    assert "no_such_claim" in capsys.readouterr().err


def test_demo_prints_verdicts(quick_demo):
    # the fixture ran `atrous demo --quick` in-process; its output lists every claim with its verdict
    printed = (quick_demo.parent / "stdout.txt").read_text()
    results = json.loads((quick_demo / "results.json").read_text())
    for c in results["claims"]:
        assert f"{c['verdict']:>14}  {c['id']}" in printed


def test_report_renders_in_headless_chromium(quick_demo, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            # anything that is not a local file is refused (and recorded above, so the test fails)
            page.route(
                "**/*",
                lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort(),
            )
            page.goto((quick_demo / "index.html").as_uri(), wait_until="load")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
            )
            tables = page.evaluate("Array.from(document.querySelectorAll('table')).map(t => t.className)")
            rows = page.evaluate("document.querySelectorAll('table.claims tbody tr').length")
            page_links = page.evaluate("Array.from(document.links).map(a => a.getAttribute('href'))")
            verdicts = page.evaluate(
                "Array.from(document.querySelectorAll('table.claims tbody tr td:nth-child(3)'))"
                ".map(td => td.querySelector('b').textContent)"
            )
        finally:
            browser.close()

    results = json.loads((quick_demo / "results.json").read_text())
    assert len(images) == len(results["figures"]) >= 10
    for src, complete, width in images:
        assert complete and width > 0, src
    for cls in ("claims", "models", "recall", "coverage", "datasets", "timings"):
        assert cls in tables
    # the page opens with the claims, and each links to its experiment's section
    assert tables[0] == "claims"
    links = page_links
    for c in results["claims"]:
        assert f"#exp-{c['experiment']}" in links
    assert rows == len(results["claims"])
    assert verdicts == [c["verdict"] for c in results["claims"]]
    assert requests and all(url.startswith("file://") for url in requests), requests
    # a real screenshot: a PNG with a plausible page size
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 1000
