"""The demo report's index.html: built only from results.json's numbers, self-contained (inline CSS, images
as PNG files beside it, no script, no external address)."""

from __future__ import annotations

from html import escape


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bucket(b: dict) -> str:
    return f"[{b['min']}, {b['max']})" if b["max"] is not None else f"[{b['min']}, ∞)"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
table.claims td, table.claims th { text-align: left; }
.holds { background: #d8f0d8; } .does-not-hold { background: #f6d5d5; } .inconclusive { background: #f3ecd0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _replicates(models: dict, small_px: int) -> list[str]:
    """The per-run numbers of the models trained more than once (their other rows show the means)."""
    rows = [
        [
            f"<b>{escape(key)}</b>",
            str(run["seed"]),
            _num(run["final_loss"]),
            _num(run["miou"]),
            _num(run["small_recall"]),
        ]
        for key, m in models.items()
        for run in m.get("replicates", [])
    ]
    if not rows:
        return []
    keys = ", ".join(k for k, m in models.items() if "replicates" in m)
    return [
        f"<p>{escape(keys)}: trained once per seed below. Their accuracy numbers on this page (mIoU, recall) "
        "are the means over these runs, because their recalls of small objects differ by about the "
        "seed-to-seed spread; their cost, ERF and example predictions come from the first run's model.</p>",
        _table(
            ["model", "training seed", "final loss", "mIoU", f"recall < {small_px} px"], rows, "replicates"
        ),
    ]


def render(results: dict) -> str:
    """The whole page as a string."""
    models = results["models"]
    budget = results["budget"]
    figs = results["figures"]
    small_px = results["small_px"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>atrous demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>atrous demo report</h1>",
        f"<p class='note'>seed {results['seed']}{' · quick run' if results['quick'] else ''} · "
        f"{budget['steps']} training steps per model (batch {budget['batch']}, {budget['crop']} px crops) · "
        f"run time {results['timings_s']['total']:.0f} s on the CPU. Every number on this page is in "
        "<code>results.json</code>; every verdict is computed from those numbers by the rule shown beside "
        "it.</p>",
    ]

    # claims first: the point of the page
    rows = []
    for c in results["claims"]:
        cls = c["verdict"].replace(" ", "-")
        ev = "<br>".join(f"{escape(k)} = {_num(v)}" for k, v in c["evidence"].items())
        rows.append(
            [
                f"<code>{escape(c['id'])}</code>",
                escape(c["claim"]),
                f"<b class='{cls}'>{escape(c['verdict'])}</b>",
                ev,
                escape(c["rule"]["text"]),
            ]
        )
    parts += [
        "<h2>Claims and verdicts</h2>",
        _table(["id", "claim", "verdict", "evidence", "rule"], rows, "claims"),
    ]

    # headline table
    rows = []
    for key, m in models.items():
        rf = f"global (local {m['rf']})" if m["global"] else str(m["rf"])
        rows.append(
            [
                f"<b>{escape(key)}</b>",
                escape(m["role"]),
                _num(m["params"]),
                str(m["output_stride"]),
                rf,
                _num(m["erf_radius95"], 1),
                _num(m["flops"] / 1e6, 1),
                _num(m["latency_ms"], 2),
                _num(m["peak_memory_mib"], 1),
                _num(m["miou"]),
                _num(m["small_recall"]),
                str(m["small_object_limit"]),
            ]
        )
    parts += [
        "<h2>Models: accuracy and cost</h2>",
        f"<p>All models are trained on <code>synthetic:shapes</code> ({results['data']['shapes']['spec']}) and "
        f"evaluated on its validation split at {budget['shapes_size']}x{budget['shapes_size']}; cost is "
        "measured at the same size, batch 1, on this CPU, on each model's <code>atrous.optimize</code> copy "
        "(BatchNorm folded, channels_last; what predict and eval run) (latency: median of repeated forwards; "
        "peak memory: peak resident memory of one inference forward in a fresh process minus its resident "
        "memory after loading). The gridded, HDC and large-rate stacks have identical parameters (same depth and width); "
        "FCN-32s, FCN-8s and DeepLab v3 share one ResNet-18 backbone (width 1/16) and differ in head and "
        "output stride.</p>",
        _table(
            [
                "model",
                "what",
                "params",
                "output stride",
                "theoretical RF (px)",
                "ERF radius 95 % (px)",
                "MFLOPs (2 x mult-adds)",
                "latency (ms)",
                "peak memory (MiB)",
                "mIoU",
                f"recall < {small_px} px",
                "small-object limit (px)",
            ],
            rows,
            "headline",
        ),
    ]

    # small objects
    buckets = results["size_buckets"]
    rows = []
    for key, m in models.items():
        cells = [f"<b>{escape(key)}</b>"]
        for b in m["object_recall_by_size"]:
            cells.append(f"{_num(b['recall'])} <span class='note'>({b['objects']})</span>")
        rows.append(cells)
    parts += [
        "<h2>1. Small objects: object recall by size</h2>",
        "<p>Every foreground connected component is an object; its recall is the fraction of its pixels "
        "predicted as its class; a bucket's recall is the mean over its objects (number in brackets).</p>",
        _table(["model", *[f"sqrt(area) {_bucket(b)}" for b in buckets]], rows, "recall"),
        *_replicates(models, small_px),
        f"<img src='{figs['recall_by_size']}' alt='object recall by size'>",
        f"<img src='{figs['shapes_predictions']}' alt='shapes predictions'>",
    ]

    # gridding
    cov = results["coverage"]
    rows = [
        [
            f"<b>{escape(k)}</b>",
            ",".join(map(str, c["rates"])),
            str(c["rf"]),
            str(c["holes"]),
            _num(c["gridding_ratio"]),
        ]
        for k, c in cov.items()
    ]
    tex = results["texture"]
    trows = [
        [
            f"<b>{escape(k)}</b>",
            ",".join(map(str, t["options"]["rates"])),
            _num(t["pixel_acc"]),
            _num(t["miou"]),
            _num(t["artifact"]),
        ]
        for k, t in tex.items()
    ]
    parts += [
        "<h2>2. Gridding</h2>",
        "<p>Coverage of the rate lists (3x3 kernels): the number of paths from each input pixel to one output "
        "pixel; a hole is a pixel inside the receptive field that no path reaches.</p>",
        _table(["stack", "rates", "RF (px)", "holes", "gridding ratio"], rows, "coverage"),
        f"<img src='{figs['coverage']}' alt='coverage maps'>",
        "<p>The texture task (<code>synthetic:texture</code>): a <i>checker</i> region alternates two values "
        "between neighbouring pixels, a <i>flat</i> region does not, and every parity sublattice of the image "
        "is distributed identically for both classes, so a network whose rates are all even cannot tell them "
        f"apart. Chance (majority class) is {_num(results['texture_chance_acc'])}. The artifact column is the "
        "fraction of neighbouring pixel pairs inside one ground-truth region whose predictions differ.</p>",
        _table(["model", "rates", "pixel accuracy", "mIoU", "artifact"], trows, "texture"),
        f"<img src='{figs['texture_predictions']}' alt='texture predictions'>",
    ]

    # long range
    rows = [
        [
            f"<b>{escape(k)}</b>",
            escape(models[k]["role"]),
            _num(models[k]["small_recall"]),
            _num(models[k]["miou"]),
        ]
        for k in ("large", "aspp", "hdc")
    ]
    parts += [
        "<h2>3. Long-range context: large rates only vs ASPP vs HDC</h2>",
        _table(["model", "what", f"recall < {small_px} px", "mIoU"], rows, "longrange"),
        "<h2>4. Receptive fields</h2>",
        f"<p>Theoretical RF of the rate-1 stack with the same parameters as the HDC stack: "
        f"{results['rate1_stack']['rf']} px ({_num(results['rate1_stack']['params'])} parameters).</p>",
        f"<img src='{figs['erf']}' alt='effective receptive fields'>",
    ]

    # how it was run
    rows = [[escape(k), _num(v, 1)] for k, v in results["timings_s"].items()]
    parts += [
        "<h2>How this was run</h2>",
        "<p>Every model: AdamW, linear warm-up then cosine decay, cross-entropy, random crops and flips, the "
        "same steps and batch. Validation images are never trained on. Per-stage wall time (s):</p>",
        _table(["stage", "seconds"], rows, "timings"),
        "</body></html>",
    ]
    return "\n".join(parts)
