"""What the demo trains: every model as a registry name and options (so `atrous train --model NAME --opt
...` reruns it), the task it trains on, and the experiment (section of the report) it belongs to; and the
`Config` each run is trained from by the training engine.

One factor varies inside each experiment; the rest is equal (depth, width, steps, batch, crops, data,
optimiser). Models are shared between claims: the pooling sweep's networks also answer the boundary,
small-object and ERF claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atrous.config import Config
from atrous.report.tasks import Budget

CHANNELS = 12  # width of every stack (cost grows with its square: 12 fits 72 runs in the budget)
DEPTH = 6
RATE1 = (1,) * DEPTH
HDC_RATES = (1, 2, 3, 1, 2, 3)  # Wang et al.'s rule: no common factor, covers its field without holes
GRIDDED_RATES = (2,) * DEPTH  # common factor 2: the checkerboard field
LARGE_RATES = (5, 7, 9, 5, 7, 9)  # large rates only (no common factor, so no parity gridding)
# Context heads on the output-stride-8 pooling network: a 256 px image gives a 32x32 map (DeepLab v3's
# 513 px at output stride 8 gives 65x65 with ASPP rates 12, 24, 36: about half that, 3, 6, 9 here)
CONTEXT_ASPP_RATES = (3, 6, 9)
CONTEXT_LARGE_RATES = (3, 5, 7, 3, 5, 7)
# DenseASPP's paper rates 3, 6, 12, 18, 24 (65x65 map) halved for the 32x32 map. Parameters of the whole
# model at 4 classes: context stacks 14,920; ASPP at 18 channels 15,124; DenseASPP at growth 8 (bottleneck
# 16) 15,696 (within 5 %)
CONTEXT_DENSE_RATES = (2, 3, 6, 9, 12)
CONTEXT_DENSE_GROWTH = 8
CONTEXT_ASPP_CHANNELS = 18


@dataclass(frozen=True)
class Spec:
    """One compared model: trained on `task` with every seed of the budget."""

    task: str  # a data set of atrous.report.tasks
    name: str  # registry name
    options: dict
    role: str  # what it is, in words, for the page
    experiment: str  # the report section that trains it


def _pool(k: int, **extra) -> dict:
    return {"rates": list(RATE1), "channels": CHANNELS, "poolings": k, **extra}


RESNET18 = {"backbone": "resnet18", "width": 0.0625}
MODELS: dict[str, Spec] = {
    **{
        f"pool{k}": Spec(
            "shapes", "poolnet", _pool(k), f"{k} poolings (output stride {2**k}), bilinear", "pooling"
        )
        for k in range(6)
    },
    "hdc": Spec(
        "shapes",
        "dilated_net",
        {"rates": list(HDC_RATES), "channels": CHANNELS},
        "no pooling, HDC rates 1,2,3,1,2,3",
        "pooling",
    ),
    "fcn32s": Spec("shapes", "fcn32s", RESNET18, "ResNet-18 (1/16 width) + FCN-32s head", "pooling"),
    "fcn8s": Spec("shapes", "fcn8s", RESNET18, "ResNet-18 (1/16 width) + FCN-8s skips", "pooling"),
    "pool3_deconv": Spec(
        "shapes", "poolnet", _pool(3, upsample="deconv"), "3 poolings, learned deconvolution", "upsampling"
    ),
    "pool3_duc": Spec("shapes", "poolnet", _pool(3, upsample="duc"), "3 poolings, DUC", "upsampling"),
    "tex_gridded": Spec(
        "texture",
        "dilated_net",
        {"rates": list(GRIDDED_RATES), "channels": CHANNELS},
        "rates 2,2,2,2,2,2 (gridded)",
        "gridding",
    ),
    "tex_hdc": Spec(
        "texture", "dilated_net", {"rates": list(HDC_RATES), "channels": CHANNELS}, "HDC rates", "gridding"
    ),
    "brd_hdc": Spec(
        "borders",
        "dilated_net",
        {"rates": list(HDC_RATES), "channels": CHANNELS},
        "HDC rates 1,2,3,1,2,3",
        "neighbourhood",
    ),
    "brd_large": Spec(
        "borders",
        "dilated_net",
        {"rates": list(LARGE_RATES), "channels": CHANNELS},
        "large rates 5,7,9,5,7,9",
        "neighbourhood",
    ),
    "brd_reparam": Spec(
        "borders",
        "dilated_net",
        {"rates": list(HDC_RATES), "channels": CHANNELS, "block": "reparam"},
        "HDC rates, each layer a dilated re-parameterised block + 1x1 (parameters matched)",
        "neighbourhood",
    ),
    "ctx_aspp": Spec(
        "borders",
        "poolnet",
        _pool(
            3,
            context="aspp",
            context_rates=list(CONTEXT_ASPP_RATES),
            context_channels=CONTEXT_ASPP_CHANNELS,
        ),
        "output stride 8 + ASPP (1x1, rates 3,6,9, image pooling)",
        "context",
    ),
    "ctx_denseaspp": Spec(
        "borders",
        "poolnet",
        _pool(
            3,
            context="denseaspp",
            context_rates=list(CONTEXT_DENSE_RATES),
            context_channels=CONTEXT_DENSE_GROWTH,
        ),
        "output stride 8 + DenseASPP (rates 2,3,6,9,12, growth 8)",
        "context",
    ),
    "ctx_large": Spec(
        "borders",
        "poolnet",
        _pool(3, context="stack", context_rates=list(CONTEXT_LARGE_RATES)),
        "output stride 8 + stack of rates 3,5,7,3,5,7",
        "context",
    ),
    "ctx_hdc": Spec(
        "borders",
        "poolnet",
        _pool(3, context="stack", context_rates=list(HDC_RATES)),
        "output stride 8 + stack of HDC rates 1,2,3,1,2,3",
        "context",
    ),
    "erf_d3": Spec("shapes", "poolnet", {**_pool(0), "rates": [1] * 3}, "3 rate-1 layers (ERF)", "erf"),
    "erf_d12": Spec("shapes", "poolnet", {**_pool(0), "rates": [1] * 12}, "12 rate-1 layers (ERF)", "erf"),
    "nuc_pool4": Spec("nuclei", "poolnet", _pool(4), "4 poolings (output stride 16), bilinear", "nuclei"),
    "nuc_dilated": Spec(
        "nuclei",
        "dilated_net",
        {"rates": list(HDC_RATES), "channels": CHANNELS},
        "no pooling, HDC rates",
        "nuclei",
    ),
}
# the rate-1 stacks whose ERF is compared, by depth (pool0 is the 6-layer one)
ERF_STACKS = {3: "erf_d3", 6: "pool0", 12: "erf_d12"}

# experiment -> (title, the factor it varies, the models it trains)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "pooling": ("Pooling: output stride and small objects", "number of 2x2 poolings k (output stride 2^k)"),
    "upsampling": ("Fixed or learned upsampling", "the upsampling at output stride 8"),
    "gridding": ("Gridding", "the dilation rates (common factor or HDC)"),
    "neighbourhood": (
        "Small objects that need their own neighbourhood",
        "the dilation rates (HDC or large only)",
    ),
    "context": ("Context heads on one output-stride-8 backbone", "the context head"),
    "erf": ("Effective receptive field and depth", "depth of a rate-1 stack"),
    "nuclei": ("Real data: nuclei", "pooling (output stride 16) or dilation (output stride 1)"),
}


# models an experiment reads that another one trains (shared between claims, trained once)
SHARED = {"upsampling": ["pool3"], "erf": ["pool0"]}


def models_of(experiment: str) -> list[str]:
    """The models an experiment compares: those it trains and those it shares."""
    return SHARED.get(experiment, []) + [k for k, s in MODELS.items() if s.experiment == experiment]


def config_for(key: str, seed: int, *, data_spec: str, budget: Budget, out: Path) -> Config:
    """The training config of one run: what `atrous train` would be given (its resolved form is saved in
    the run folder and in results.json)."""
    spec = MODELS[key]
    c = Config()
    c.model.name = spec.name
    c.model.options = dict(spec.options)
    c.data.train = data_spec
    c.data.train_split = "train"
    c.data.val_split = None  # scored once, after training, on the validation split (final weights)
    c.data.crop_size = budget.crop if spec.task != "texture" else min(budget.crop, 64)
    c.data.scale = (1.0, 1.0)  # object sizes stay those of the size buckets
    c.data.color_jitter = 0.0
    c.data.batch_size = budget.batch
    c.optim.name = "adamw"
    c.optim.lr = 4e-3
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    steps = budget.texture_steps if spec.task == "texture" else budget.steps
    c.optim.warmup_iters = max(1, steps // 20)
    c.train.iters = steps
    c.train.seed = seed
    c.train.threads = 1
    c.train.device = "cpu"
    c.train.out = str(out)
    c.log.progress = False
    c.log.tensorboard = False
    return c
