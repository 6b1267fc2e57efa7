"""Precision settings: what each name means per device, and bad names are refused."""

from __future__ import annotations

import pytest
import torch

from cryonoo.train.precision import PRECISIONS, resolve_precision
from cryonoo.train.recipes import TrainConfig


def test_auto_is_float32_on_cpu():
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and not p.enabled and not p.grad_scaling
    x = torch.randn(4, 3)
    with p.autocast():
        assert torch.nn.functional.linear(x, torch.randn(2, 3)).dtype == torch.float32


def test_bf16_on_cpu_runs_linear_layers_in_bfloat16():
    p = resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and p.enabled and not p.grad_scaling
    with p.autocast():
        y = torch.nn.functional.linear(torch.randn(4, 3), torch.randn(2, 3))
    assert y.dtype == torch.bfloat16
    assert not p.grad_scaler().is_enabled()


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig().replace({"optim.precision": "half"})
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}


def test_old_configs_with_amp_load():
    """Run directories written before ``precision`` existed stored ``amp: bool``."""
    old = TrainConfig().to_dict()
    del old["precision"]
    assert TrainConfig.from_dict({**old, "amp": True}).optim.precision == "auto"
    assert TrainConfig.from_dict({**old, "amp": False}).optim.precision == "fp32"
    new = TrainConfig().replace({"optim.precision": "bf16"}).to_dict()
    assert TrainConfig.from_dict(new).optim.precision == "bf16"
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({**new, "amp_level": 1})
