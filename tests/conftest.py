"""Shared test set-up. Expensive artefacts (a tiny trained checkpoint, one quick demo run) are session
fixtures here so that every test that needs one reuses it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
