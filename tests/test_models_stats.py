import math

import pytest
import torch

from trajshift.errors import ConfigError
from trajshift.models import build_model
from trajshift.stats import mean_ci95, t975


def test_resnet20_body_has_269072_parameters_and_takes_any_size():
    m = build_model({"name": "resnet20"}, 10)
    assert sum(p.numel() for n, p in m.named_parameters() if not n.startswith("fc.")) == 269_072
    for size in (28, 32, 64, 84):
        assert m(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_resnet18_has_torchvision_names_and_size():
    m = build_model({"name": "resnet18"}, 1000)
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 11_689_512
    assert len(sd) == 122      # 62 parameters + 20 BatchNorms x 3 buffers, as torchvision's resnet18
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight"):
        assert key in sd
    m2 = build_model({"name": "resnet18"}, 1000)
    m2.load_state_dict(sd)                     # a torchvision-format file round-trips
    assert torch.equal(m2.layer3[0].conv1.weight, m.layer3[0].conv1.weight)


def test_conv4_and_options():
    m = build_model({"name": "conv4", "activation": "softplus", "pooling": "max"}, 5)
    assert m(torch.randn(2, 3, 28, 28)).shape == (2, 5)
    assert isinstance(m.body[2], torch.nn.Softplus)
    with pytest.raises(ConfigError, match=r"model.activation: unknown activation 'gelu'; allowed values: relu, "):
        build_model({"name": "conv4", "activation": "gelu"}, 5)
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'vgg'"):
        build_model({"name": "vgg"}, 5)


def test_confidence_interval_against_hand_values():
    # values 0.5..0.9: mean 0.7, s = sqrt(0.025), t(4) = 2.776 -> 2.776 * 0.158114 / sqrt(5) = 0.196293
    mean, half = mean_ci95([0.5, 0.6, 0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.7) and half == pytest.approx(0.196293, abs=1e-6)
    mean, half = mean_ci95([1.0, 3.0])            # s = sqrt(2), t(1) = 12.706 -> 12.706
    assert half == pytest.approx(12.706, abs=1e-9)
    assert math.isnan(mean_ci95([0.3])[1])
    assert t975(30) == 2.042 and t975(60) == pytest.approx(2.000, abs=1e-3) and t975(120) == pytest.approx(1.980,
                                                                                                        abs=1e-3)
