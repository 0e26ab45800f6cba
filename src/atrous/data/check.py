"""Data checks before training: what users get wrong in their masks, found before a run is wasted on it.

`atrous.data.check_data(spec, split=...)` reads every mask of the split once (through the data set's label
convention) and every image header, and returns a `Report`: the label histogram, image sizes, classes
and findings; `check_dataset(dataset)` does the same for a data set already built. Training calls
`check_data` on its training and validation splits and stops on an error; `atrous data check SPEC`
prints the reports.

Errors (training would be silently wrong):
- `ignore-only-foreground`: the masks hold 0 and 255 and nothing else. 255 is the ignore value, so the
  foreground is never learned and the metrics read 100 %; 0/255 binary masks need `?map=0:0,255:1`.
- `stray-label`: with no class list (no classes file, palette file or `num_classes`), the largest label L
  alone sets the class count although it is far above the others: L >= 2 * (M + 1) and L - M >= 8, where
  M is the next largest label (one pixel of 200 among labels 0..2 would make a 201-class model). The
  files holding L are named.
- `empty-split`, `no-such-split` (with the likely name when one exists, e.g. `validation` for `val`),
  `bad-file` (a file the reader refuses), `label-out-of-range` (labels >= the class count) and
  `too-many-labels` (a scanned class count above 1000: instance ids, not classes).
Warnings: `absent-class` (a class in no mask of the split, class 0 included), `rare-label` (a label on
fewer than `RARE_FRACTION` of the labelled pixels: often annotation noise).
Generated data (`synthetic:`) is not checked.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType

import numpy as np

from atrous.data.base import likely_split
from atrous.data.io import IGNORE_INDEX, DataError, open_image, oriented_size
from atrous.data.spec import available_splits_in, build_from
from atrous.errors import AtrousError

RARE_FRACTION = 1e-4  # a label on fewer than 0.01 % of the labelled pixels is "rare"
STRAY_RATIO, STRAY_GAP = 2, 8  # L >= 2 * (M + 1) and L - M >= 8: L is far above the others
_NAMED = 3  # files named per finding


@dataclass
class Finding:
    level: str  # "error" or "warning"
    code: str
    message: str
    files: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What `check_data` found in one split. `ok` is False when a finding is an error."""

    data: str
    split: str | None
    images: int = 0
    classes: list[str] = field(default_factory=list)
    classes_from: str = ""
    label_histogram: dict[int, int] = field(default_factory=dict)  # label -> pixels (ignore_index too)
    ignore_index: int = IGNORE_INDEX
    image_sizes: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def codes(self, level: str | None = None) -> list[str]:
        return [f.code for f in self.findings if level is None or f.level == level]

    def add(self, level: str, code: str, message: str, files=()) -> None:
        self.findings.append(Finding(level, code, message, [str(f) for f in list(files)[:_NAMED]]))

    def raise_for_errors(self) -> None:
        """Raise a one-line `DataError` with the first error (and how many more) when there is one."""
        errors = [f for f in self.findings if f.level == "error"]
        if errors:
            first = errors[0]
            files = f" (in {', '.join(first.files)})" if first.files else ""
            more = (
                f"; {len(errors) - 1} more error(s): atrous data check lists them" if len(errors) > 1 else ""
            )
            raise DataError(first.message + files + more)

    def warnings(self) -> list[str]:
        """The warnings, one line each (training logs them)."""
        return [f"{f.code}: {f.message}" for f in self.findings if f.level == "warning"]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["label_histogram"] = {str(k): v for k, v in sorted(self.label_histogram.items())}
        out["ok"] = self.ok
        return out

    def format(self) -> str:
        """The report as text: header, classes, histogram, sizes, findings."""
        where = f"{self.data} [{self.split or 'all'}]"
        lines = [f"{where}: {self.images} image(s), {len(self.classes)} class(es) (from {self.classes_from})"]
        if self.classes:
            shown = ", ".join(f"{i} {name}" for i, name in enumerate(self.classes[:30]))
            lines.append(f"classes: {shown}" + (", ..." if len(self.classes) > 30 else ""))
        ignore = self.ignore_index
        total = sum(v for k, v in self.label_histogram.items() if k != ignore) or 1
        if self.label_histogram:
            lines.append("label histogram (pixels, share of labelled pixels):")
        for label, count in sorted(self.label_histogram.items()):
            known = 0 <= label < len(self.classes)
            name = "ignore" if label == ignore else self.classes[label] if known else "?"
            share = "" if label == ignore else f" {100 * count / total:6.2f}%"
            lines.append(f"  {label:>5} {name:<16} {count:>12}{share}")
        if self.image_sizes:
            s = self.image_sizes
            lines.append(
                f"image sizes: {s['distinct']} distinct, min {s['min']}, max {s['max']}, "
                f"median short side {s['median_short_side']}"
            )
        for f in self.findings:
            files = f" [{', '.join(f.files)}]" if f.files else ""
            lines.append(f"{f.level}: {f.code}: {f.message}{files}")
        if not self.findings:
            lines.append("no findings")
        return "\n".join(lines)


def check_data_in(
    layouts: Mapping[str, ModuleType],
    spec: str,
    split: str | None = None,
    *,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Report:
    """Check the data `spec` (split `split`) of `layouts` (what `atrous.data.check_data` does with the
    package's layouts); see the module docstring.

    Never raises for bad data: every problem is a finding (`report.raise_for_errors()` turns the first
    error into a one-line `DataError`); training calls it on its training and validation splits, raises
    the errors and logs `report.warnings()`.
    """
    report = Report(data=spec, split=split, ignore_index=ignore_index)
    try:
        available = available_splits_in(layouts, spec)
        if split is not None and available and split not in available:
            likely = likely_split(split, available)
            if likely is not None:
                report.add(
                    "error",
                    "no-such-split",
                    f"{spec} has no split {split!r} but has {likely!r}: use the split {likely!r} "
                    f"(e.g. --split {likely} or data.val_split={likely})",
                )
                return report
        dataset = build_from(layouts, spec, split, num_classes=num_classes, ignore_index=ignore_index)
    except AtrousError as e:
        report.add("error", _code(str(e)), str(e))
        return report
    return check_dataset(dataset, report)


def check_dataset(dataset, report: Report | None = None) -> Report:
    """The checks of `check_data` on a data set already built (no second class scan); generated data
    (no `pairs`) gets an empty report."""
    report = report or Report(
        data=getattr(dataset, "name", repr(dataset)),
        split=None,
        ignore_index=getattr(dataset, "ignore_index", IGNORE_INDEX),
    )
    if not hasattr(dataset, "pairs"):
        report.classes, report.classes_from = list(dataset.classes), "generated"
        report.images = len(dataset)
        return report
    _scan(dataset, report)
    return report


def _code(message: str) -> str:
    """The finding code of an error the data set raised while being built."""
    for code, words in _BUILD_ERRORS:
        if any(w in message for w in words):
            return code
    return "bad-file"


_BUILD_ERRORS = (
    ("ignore-only-foreground", ("nothing to learn",)),
    ("empty-split", ("is empty", "no usable")),
    ("no-such-split", ("no split", "needs a split", "has splits")),
    ("too-many-labels", ("masks hold labels up to",)),
)


def _scan(dataset, report: Report) -> None:
    """Fill `report` from every pair of `dataset`: histogram, sizes, per-label files, findings."""
    report.images = len(dataset)
    report.classes, report.classes_from = list(dataset.classes), dataset.classes_from
    histogram: Counter = Counter()
    files_with: dict[int, list] = defaultdict(list)
    sizes: Counter = Counter()
    for image_path, mask_path in dataset.pairs:
        try:
            with open_image(image_path, "image") as img:
                sizes[oriented_size(img)] += 1
            mask = dataset.read_labels(mask_path)
        except AtrousError as e:
            report.add("error", "bad-file", str(e), [mask_path])
            continue
        values, counts = np.unique(mask, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            histogram[v] += c
            files_with[v].append(mask_path)
    report.label_histogram = dict(sorted(histogram.items()))
    if sizes:
        report.image_sizes = _sizes(sizes)
    _label_findings(dataset, report, histogram, files_with)


def _sizes(sizes: Counter) -> dict:
    shorts = sorted(s for (w, h), n in sizes.items() for s in [min(w, h)] * n)
    return {
        "distinct": len(sizes),
        "min": list(min(sizes, key=lambda wh: wh[0] * wh[1])),
        "max": list(max(sizes, key=lambda wh: wh[0] * wh[1])),
        "median_short_side": shorts[len(shorts) // 2],
        "common": [[w, h, n] for (w, h), n in sizes.most_common(5)],
    }


def _label_findings(dataset, report: Report, histogram: Counter, files_with: dict) -> None:
    k, ignore = dataset.num_classes, dataset.ignore_index
    labels = sorted(v for v in histogram if v != ignore)
    where = f"{dataset.name}"
    if histogram.get(ignore) and set(labels) <= {0}:
        report.add(
            "error",
            "ignore-only-foreground",
            f"{where}: the masks hold only 0 and {ignore}, and {ignore} is the ignore value: the "
            f"foreground would never be learned (a model predicting 0 everywhere scores 100 %); if "
            f"{ignore} marks your objects (0/{ignore} binary masks), add ?map=0:0,{ignore}:1 to the data spec",
            files_with[ignore],
        )
    if dataset.classes_from == "scan" and len(labels) >= 2:
        top, second = labels[-1], labels[-2]
        if top >= STRAY_RATIO * (second + 1) and top - second >= STRAY_GAP:
            report.add(
                "error",
                "stray-label",
                f"{where}: label {top} alone sets the class count to {top + 1} (the other labels stop at "
                f"{second}; {histogram[top]} pixel(s) in {len(files_with[top])} file(s)): fix those masks, "
                "or write ROOT/classes.txt listing the classes",
                files_with[top],
            )
            return
    out_of_range = [v for v in labels if v >= k or v < 0]
    for v in out_of_range:
        report.add(
            "error",
            "label-out-of-range",
            f"{where}: label {v} is outside 0..{k - 1} ({k} classes, {ignore} = ignore): {dataset.label_fix}",
            files_with[v],
        )
    absent = [c for c in range(k) if not histogram.get(c)]
    if absent and len(absent) < k:
        names = ", ".join(f"{c} ({dataset.classes[c]})" for c in absent[:10])
        report.add("warning", "absent-class", f"{where}: class(es) {names} appear in no mask")
    labelled = sum(histogram[v] for v in labels) or 1
    for v in labels:
        if v not in out_of_range and histogram[v] < RARE_FRACTION * labelled:
            report.add(
                "warning",
                "rare-label",
                f"{where}: label {v} covers {histogram[v]} of {labelled} labelled pixels "
                f"(< {100 * RARE_FRACTION:g} %): check that it is not annotation noise",
                files_with[v],
            )


def reports_json(reports: list[Report]) -> str:
    """Reports of several splits as one JSON document (`atrous data check --json`)."""
    return json.dumps({"ok": all(r.ok for r in reports), "splits": [r.to_dict() for r in reports]}, indent=2)
