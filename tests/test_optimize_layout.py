"""atrous.optimize.layout: prepare_training keeps parameters, gradients and loss, also on a model that holds
the convolution whose channels_last backward corrupts the heap in torch 2.14.1 (a 1x1 stride-2 shortcut with
4 input channels: ResNet-18 at width 1/16), run in a subprocess so that a crash fails the test instead of
killing the test session."""

import json
import subprocess
import sys

import torch
from torch import nn

from _optimize_helpers import tiny
from atrous import models
from atrous.optimize import prepare_training

SCRIPT = r"""
import copy, json, torch
from atrous import models
from atrous.optimize import prepare_training

torch.manual_seed(0)
torch.set_num_threads(1)
ref = models.build("deeplabv3", 4, backbone="resnet18", width=0.0625, output_stride=8, rates=[2, 3, 4])
for m in ref.modules():  # dropout draws its mask in memory order, which differs between the layouts
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
fast = prepare_training(copy.deepcopy(ref))
# the shortcut alone, as in the reproduction that aborts every time without the guard
shortcut = fast.get_submodule("backbone.layer2.0.downsample.0")
z = torch.randn(8, 4, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
for _ in range(20):
    shortcut(z).sum().backward()
x, y = torch.randn(8, 3, 48, 48), torch.randint(0, 4, (8, 48, 48))
res = {"losses": {}, "grads": {}}
for name, m in (("nchw", ref), ("channels_last", fast)):
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    m.train()
    res["losses"][name] = []
    for step in range(6):  # the unguarded channels_last model aborts within these steps
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:  # same weights in both models: the same gradients, up to float rounding
            res["grads"][name] = [p.grad.clone() for p in m.parameters()]
        opt.step()
        res["losses"][name].append(loss.item())
pairs = zip(res["grads"]["nchw"], res["grads"]["channels_last"], strict=True)
res["grad_rel_diff"] = max(float((a - b).abs().max()) / max(float(a.abs().max()), 1e-6) for a, b in pairs)
del res["grads"]
print(json.dumps(res))
"""


def test_guarded_convolution_stays_nchw_and_the_rest_goes_channels_last():
    model = prepare_training(models.build("deeplabv3", 4, backbone="resnet18", width=0.0625))
    shortcut = model.get_submodule("backbone.layer2.0.downsample.0")
    assert isinstance(shortcut, nn.Conv2d) and shortcut.in_channels == 4 and shortcut.stride == (2, 2)
    assert shortcut.weight.stride() == (4, 1, 1, 1)  # plain NCHW strides, not the ambiguous 1x1 ones
    wide = model.get_submodule("backbone.layer3.0.downsample.0")  # 8 input channels: not affected
    assert wide.weight.stride() == (8, 1, 8, 8)  # channels_last strides
    x = torch.randn(2, 3, 33, 31)
    model.train()
    y = model(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert shortcut.weight.grad is not None


def test_channels_last_training_of_a_model_with_the_crashing_shape_matches_nchw():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    first = res["losses"]["nchw"][0]
    assert abs(res["losses"]["channels_last"][0] - first) <= 1e-5 * max(1.0, first)
    assert res["grad_rel_diff"] < 1e-3
    for losses in res["losses"].values():  # both trained (the trajectories part by rounding, then BN)
        assert losses[-1] < losses[0]


def test_prepare_training_keeps_parameters_gradients_and_loss():
    ref = tiny("dilated_net")
    model = prepare_training(tiny("dilated_net"))
    model.load_state_dict(ref.state_dict())
    params_before = list(model.parameters())
    x, y = torch.randn(2, 3, 17, 15), torch.randint(0, 3, (2, 17, 15))
    losses = []
    for m in (ref, model):
        m.train()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss)
    assert list(model.parameters()) == params_before  # same Parameter objects: optimizers stay valid
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
