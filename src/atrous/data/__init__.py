"""Data sets and paired transforms: `build_dataset("KIND:PATH?key=value&...", split)`.

Kinds: `folder`, `voc`, `cityscapes`, `synthetic`, `mmseg`, `ade20k`, `camvid` (see `atrous.data.spec` for
the grammar and the options every spec takes). The layouts are a plain dict built here from the layout
modules, which import only `base`/`io`/`labels`: no registry and no import circle. `io` is the one image
and mask reader of atrous; `check` finds what users get wrong in their masks before training.
"""

from atrous.data import ade20k, camvid, cityscapes, folder, mmseg, synthetic, voc
from atrous.data.base import SegmentationDataset, likely_split, standard_palette
from atrous.data.check import Report, check_data_in
from atrous.data.io import IGNORE_INDEX, IMAGE_SUFFIXES, DataError, read_image, read_mask
from atrous.data.labels import LabelConvention, encode_prediction
from atrous.data.spec import available_splits_in, build_from, parse_spec
from atrous.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

# kind -> module, in the order messages list them: `synthetic` is generated, the others read files.
_BY_KIND = {
    "folder": folder,
    "voc": voc,
    "cityscapes": cityscapes,
    "synthetic": synthetic,
    "mmseg": mmseg,
    "ade20k": ade20k,
    "camvid": camvid,
}
KINDS = tuple(_BY_KIND)
LAYOUTS = {kind: module for kind, module in _BY_KIND.items() if kind != "synthetic"}  # the file layouts


def build_dataset(
    spec: str,
    split: str | None = None,
    *,
    transform=None,
    skip_bad: bool = False,
    num_classes=None,
    ignore_index: int = IGNORE_INDEX,
):
    """The data set named by `spec` (`KIND:PATH?key=value&...`) for `split`.

    `num_classes`, when given, must agree with the data set's own class list (VOC 21, Cityscapes 19, ADE20K
    150, CamVid 11, synthetic per task, a classes or palette file); for `folder:`/`mmseg:` data without a
    class list it sets the number of classes and spares the scan of every mask. Bad files raise a
    one-line `DataError`, or with `skip_bad` are left out with a warning. `ignore_index` is the mask value
    that is not a class (the run's `loss.ignore_index`; generated data holds none): with another value
    than 255, a 255 in a mask is a label like any other (out of range unless it is a class), and the label
    options, which write 255 for "ignore", must map to it instead (e.g. `map=11:0` when 0 is ignored).
    """
    return build_from(
        _BY_KIND,
        spec,
        split,
        transform=transform,
        skip_bad=skip_bad,
        num_classes=num_classes,
        ignore_index=ignore_index,
    )


def available_splits(spec: str) -> list[str]:
    """The splits a data set offers (e.g. ["train", "val"]); [] for a folder without split folders."""
    return available_splits_in(_BY_KIND, spec)


def check_data(
    spec: str, split: str | None = None, *, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX
) -> Report:
    """What `atrous data check` prints and training checks first: the label histogram, image sizes, classes
    and findings of `spec`'s split (`atrous.data.check`); every problem is a finding, never an exception
    (`report.raise_for_errors()` makes the first error a one-line `DataError`)."""
    return check_data_in(_BY_KIND, spec, split, num_classes=num_classes, ignore_index=ignore_index)


__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "KINDS",
    "LAYOUTS",
    "DataError",
    "LabelConvention",
    "Report",
    "SegmentationDataset",
    "available_splits",
    "build_dataset",
    "check_data",
    "encode_prediction",
    "eval_transform",
    "likely_split",
    "parse_spec",
    "read_image",
    "read_mask",
    "standard_palette",
    "train_transform",
]
