"""The demo report's index.html: built only from results.json's numbers, self-contained (inline CSS, images
as PNG files beside it, links to the run folders, no script, no external address). The page opens with the
claims; each links to its experiment's section, figures and runs."""

from __future__ import annotations

from html import escape

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
table.claims td, table.claims th, table.datasets td { text-align: left; }
.holds { background: #d8f0d8; } .does-not-hold { background: #f6d5d5; } .inconclusive { background: #f3ecd0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


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


def _stat(value) -> str:
    """A measurement over seeds as "mean ± std (n)", a plain number as itself."""
    if isinstance(value, dict):
        if value["mean"] is None:
            return "–"
        return f"{_num(value['mean'])} ± {_num(value['std'])} <span class='note'>(n={value['n']})</span>"
    return _num(value)


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(results: dict, name: str, alt: str) -> str:
    fig = results["figures"].get(name)
    return f"<img src='{escape(fig)}' alt='{escape(alt)}'>" if fig else ""


def _header(results: dict) -> list[str]:
    b = results["budget"]
    t = results["timings_s"]
    mode = " · quick run" if results["quick"] else ""
    only = f" · only {escape(results['only'])}" if results["only"] else ""
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>atrous demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>atrous demo report</h1>",
        f"<p class='note'>data seed {results['seed']}{mode}{only} · every model trained with "
        f"{len(results['training_seeds'])} seeds ({', '.join(map(str, results['training_seeds']))}) by the "
        f"training engine of <code>atrous train</code>, {b['steps']} steps (texture {b['texture_steps']}), batch "
        f"{b['batch']}, {b['crop']} px crops, scored with the final weights by <code>atrous.evaluate</code> on "
        f"validation images of {b['val_size']} px · {_num(t['total'], 0)} s on {escape(results['machine'])} "
        f"({b['workers']} processes of one thread). Every number is in <code>results.json</code>; every "
        "verdict is computed from those numbers by the rule shown beside it, fixed before the results.</p>",
    ]


def _claims(results: dict) -> list[str]:
    rows = []
    for c in results["claims"]:
        cls = c["verdict"].replace(" ", "-")
        ev = "<br>".join(f"{escape(k)} = {_stat(v)}" for k, v in c["evidence"].items())
        exp = c["experiment"]
        note = f"<br><span class='note'>{escape(c['note'])}</span>" if c.get("note") else ""
        rows.append(
            [
                f"<code id='claim-{escape(c['id'])}'>{escape(c['id'])}</code>",
                escape(c["claim"]) + f"<br><a href='#exp-{escape(exp)}'>experiment, figures and runs</a>",
                f"<b class='{cls}'>{escape(c['verdict'])}</b>{note}",
                ev,
                escape(c["rule"]["text"]),
            ]
        )
    return [
        "<h2>Claims and verdicts</h2>",
        "<p>A rule holds only where the difference of means passes its fixed threshold and exceeds twice its "
        "standard error over seeds; it does not hold where the difference is confidently (by two standard "
        "errors) below the claimed size; where every compared model is at the ceiling (>= 0.98) or the floor, "
        "the verdict is inconclusive and says the task could not separate them.</p>",
        _table(["id", "claim", "verdict", "evidence (mean ± std over seeds)", "rule"], rows, "claims"),
    ]


def _runs(results: dict, key: str) -> str:
    runs = results["models"][key]["runs"]
    return " ".join(f"<a href='{escape(r['dir'])}/config.yaml'>{r['seed']}</a>" for r in runs)


def _ms(m: dict, metric: str) -> str:
    mean, std = m["mean"].get(metric), m["std"].get(metric)
    return "–" if mean is None else f"{_num(mean)} ± {_num(std)}"


# per experiment, the metrics its claims read beyond the common columns
_EXTRA = {
    "gridding": ["artifact"],
    "erf": ["erf_init_share", "erf_trained_share"],
    "nuclei": ["recall"],
}


def _models_table(results: dict, keys: list[str], extra: list[str]) -> str:
    rows = []
    for key in keys:
        m = results["models"].get(key)
        if m is None:
            rows.append([f"<b>{escape(key)}</b>", "not trained in this run"] + ["–"] * (9 + len(extra)))
            continue
        opts = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        rows.append(
            [
                f"<b>{escape(key)}</b>",
                escape(m["role"])
                + f"<br><code>{escape(m['name'])}</code> <span class='note'>{escape(opts)}</span>",
                _num(m["mean"]["params"]),
                _num(m["mean"]["output_stride"]),
                _num(m["mean"]["rf"]),
                _ms(m, "miou"),
                _ms(m, "boundary_iou"),
                _ms(m, "small_recall"),
                _ms(m, "pixel_acc"),
                _ms(m, "final_loss"),
                *(_ms(m, metric) for metric in extra),
                _runs(results, key),
            ]
        )
    headers = [
        "model",
        "what (registry name, options)",
        "params",
        "output stride",
        "RF (px)",
        "mIoU",
        "boundary IoU",
        "recall < 8 px",
        "pixel acc.",
        "final loss",
        *(metric.replace("_", " ") for metric in extra),
        "runs (config)",
    ]
    return _table(headers, rows, "models")


def _octave_table(results: dict, keys: list[str]) -> str:
    rows = []
    for key in keys:
        m = results["models"].get(key)
        if m is None or "octave_recall" not in m["mean"]:
            continue
        cells = [f"<b>{escape(key)}</b>", _num(m["mean"]["output_stride"])]
        for b, s in zip(m["mean"]["octave_recall"], m["std"]["octave_recall"]):
            cells.append(
                "–"
                if b["recall"] is None
                else f"{_num(b['recall'], 2)} ± {_num(s['recall'], 2)} <span class='note'>({b['objects']})</span>"
            )
        rows.append(cells)
    heads = ["model", "OS"] + [f"[{o['min']}, {o['max']})" for o in results["octaves"]]
    return _table(heads, rows, "recall")


_TEXT = {
    "pooling": "Networks with the same six 3x3 convolutions (12 channels), 2x2 max pooling after the first k "
    "(k = 0..5, output stride 2^k) and fixed bilinear upsampling; a pooling-free dilated network of exactly the "
    "same parameters (HDC rates); FCN-32s and FCN-8s heads on a ResNet-18 (1/16 width). Task "
    "<code>synthetic:shapes</code>: the class is the object's colour, so what loses an object is resolution, "
    "not ambiguity. Recall by octave of sqrt(area), with the number of validation objects in brackets.",
    "upsampling": "The output-stride-8 pooling network (k = 3) with three final upsamplings: fixed bilinear, a "
    "learned deconvolution initialised to bilinear, and DUC (parameters differ: the DUC convolution is stated "
    "in the table).",
    "gridding": "Task <code>synthetic:texture</code>: a checker region alternates two values between "
    "neighbouring pixels, a flat region does not, and every parity sublattice looks the same for both classes, "
    "so a stack whose rates are all even cannot tell them apart. The artifact column is the fraction of "
    "neighbouring pixel pairs inside one ground-truth region whose predictions differ.",
    "neighbourhood": "Task <code>synthetic:borders</code>: an object's colour is random and its class is "
    "written only in a 2 px striped band along its border (rows, columns or checkerboard); a small object is "
    "classified only from its own few pixels seen together, the centre of a large one only with context "
    "reaching its border. Same depth (6), width (12) and parameters (the re-parameterised stack within 1 %).",
    "context": "The output-stride-8 pooling network (k = 3) with four context heads on its last map, about the "
    "same parameters (stated), on <code>synthetic:borders</code>.",
    "erf": "Rate-1 stacks of 3, 6 and 12 layers (12 channels). Share: the radius holding 95 % of the ERF's "
    "gradient mass over that of a flat weighting of the theoretical field (1 when the ERF fills the field); "
    "measured on Gaussian inputs at initialisation and after training.",
    "nuclei": "Real data: the stardist nuclei image, trained on its top half and scored on its bottom half "
    "(disjoint). A pooling network at output stride 16 against a pooling-free dilated network of exactly the "
    "same parameters; nuclei are mostly 15-25 px across.",
}


def _experiment(results: dict, name: str, exp: dict) -> list[str]:
    keys = exp["models"]
    figs = results["figures"]
    claims = [c for c in results["claims"] if c["experiment"] == name]
    links = ", ".join(
        f"<a href='#claim-{escape(c['id'])}'><code>{escape(c['id'])}</code></a> ({escape(c['verdict'])})"
        for c in claims
    )
    parts = [
        f"<h2 id='exp-{escape(name)}'>{escape(exp['title'])}</h2>",
        f"<p><b>Factor varied:</b> {escape(exp['factor'])}. <b>Claims:</b> {links or 'none'}.</p>",
        f"<p>{_TEXT[name]}</p>",
        _models_table(results, keys, _EXTRA.get(name, [])),
    ]
    if name in ("pooling", "neighbourhood", "nuclei"):
        parts.append(_octave_table(results, keys))
    for fig in sorted(f for f in figs if f.startswith(name)):
        parts.append(_img(results, fig, fig))
    if name == "gridding":
        parts += _gridding_extra(results)
    return parts


def _gridding_extra(results: dict) -> list[str]:
    static = results["static"]
    rows = [
        [
            f"<b>{escape(k)}</b>",
            ",".join(map(str, c["rates"])),
            str(c["rf"]),
            str(c["holes"]),
            _num(c["gridding_ratio"]),
        ]
        for k, c in static["coverage"].items()
    ]
    return [
        f"<p>Chance (majority class) on the texture validation split: {_num(static['texture_chance_acc'])}. "
        f"The rate-1 stack of the same depth and width has {_num(static['rate1']['params'])} parameters and a "
        f"{static['rate1']['rf']} px field; the HDC stack {_num(static['hdc']['params'])} and "
        f"{static['hdc']['rf']} px.</p>",
        _table(["stack", "rates", "RF (px)", "holes", "gridding ratio"], rows, "coverage"),
        _img(results, "coverage", "coverage maps"),
    ]


def _datasets(results: dict) -> list[str]:
    rows = [
        [
            f"<b>{escape(d['name'])}</b>",
            "real" if d["real"] else "synthetic",
            escape(d["source"]),
            ", ".join(
                f"{s}: {n} of {'x'.join(map(str, d['image_size'][s]))} px" for s, n in d["splits"].items()
            ),
        ]
        for d in results["datasets"]
    ]
    return ["<h2>Data</h2>", _table(["name", "kind", "source", "splits"], rows, "datasets")]


def _footer(results: dict) -> list[str]:
    rows = [[escape(k), _num(v, 1)] for k, v in results["timings_s"].items()]
    return [
        "<h2>How this was run</h2>",
        "<p>Every run: <code>atrous.train</code>'s engine from the config linked beside it (AdamW, lr 0.004, "
        "cosine schedule with warm-up, cross-entropy, random crops and flips, no rescaling), one thread, in its "
        "own run folder; validation only at the end, with the final weights, on a split never trained on. "
        f"Machine: {escape(results['machine'])}. Wall time per stage (s):</p>",
        _table(["stage", "seconds"], rows, "timings"),
        "</body></html>",
    ]


def render(results: dict) -> str:
    """The whole page as a string: claims first, then one section per experiment, data, how it was run."""
    parts = _header(results) + _claims(results)
    for name, exp in results["experiments"].items():
        parts += _experiment(results, name, exp)
    return "\n".join(parts + _datasets(results) + _footer(results))
