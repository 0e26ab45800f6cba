"""Theoretical receptive field of any `nn.Module`, following the real graph.

The receptive field (RF) of a unit is the set of input pixels that can influence it (Araujo, Norris & Sim,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019, give the chain formulas; Yu &
Koltun, ICLR 2016, Table 1 lists the context module's). Tools that walk a layer list are wrong for
residual, concatenating and multi-branch (ASPP) graphs, and `torch.fx` cannot trace the atrous models
(they read Python ints from `x.shape`). Here the model runs once on an input of the requested size under a
`TorchFunctionMode` that (a) moves every tensor to the `meta` device, so nothing is computed and a
ResNet-101 at 512x512 takes a fraction of a second, and (b) carries receptive-field metadata on every
tensor through every op:

- per spatial axis, the *jump* `j` (distance in input pixels between neighbouring units, a Fraction after
  upsampling) and, for each phase of a periodic pattern, the interval `[o*j + lo, o*j + hi]` of input pixels
  seen by unit `o` (on an unbounded input, so the RF is not clipped by the image border);
- a `global` flag, set by global / adaptive-to-1x1 pooling and spatial reductions (ASPP image pooling);
- the *detail*: the spacing of the coarsest grid of independent values on the path (the small-object limit).

Convolutions, pooling, transposed convolutions, interpolation, pixel (un)shuffle, padding and slicing map
the intervals exactly; elementwise ops and channel concatenation take their union. Each op's rule is
written once, in the rule table (`rules.py`), and serves both its functional call and its module: known
layers (`nn.Conv2d` and its subclasses such as `AtrousConv2d`, pooling, upsampling, `SmoothedAtrousConv2d`)
are handled as a whole from their attributes, so an implementation detail inside them (space-to-batch
reshapes, kernel taps cropped because they only read padding) does not change the theoretical answer.

Files: `axis.py` (one axis and the per-axis ops), `meta.py` (a tensor's metadata), `rules.py` (the rule
table), `shapes.py` (output shapes of the meta run), `tracer.py` (the mode, the hooks, `trace`),
`measure.py` (`receptive_field`, `small_object_limit`, `degenerate_rates`).
"""

from atrous.analysis.receptive_field.axis import Axis
from atrous.analysis.receptive_field.measure import degenerate_rates, receptive_field, small_object_limit
from atrous.analysis.receptive_field.meta import Meta
from atrous.analysis.receptive_field.rules import RULES, Rule
from atrous.analysis.receptive_field.tracer import Tracer, trace

__all__ = [
    "RULES",
    "Axis",
    "Meta",
    "Rule",
    "Tracer",
    "degenerate_rates",
    "receptive_field",
    "small_object_limit",
    "trace",
]
