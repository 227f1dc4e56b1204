import math

import pytest
import torch

from trajshift.core.errors import ConfigError
from trajshift.core.stats import interval_over_seeds, mean_ci95, t975
from trajshift.models import build_model


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
    # values 0.5..0.9: mean 0.7, s = sqrt(0.025), t(4) = 2.7764451 -> 2.7764451 * 0.1581139 / sqrt(5) = 0.1963243
    mean, half = mean_ci95([0.5, 0.6, 0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.7) and half == pytest.approx(0.1963243, abs=1e-6)
    mean, half = mean_ci95([1.0, 3.0])            # s = sqrt(2), t(1) = tan(0.475 pi) = 12.7062 -> 12.7062
    assert half == pytest.approx(math.tan(math.pi * 0.475), abs=1e-9)
    assert math.isnan(mean_ci95([0.3])[1])
    # Against quantiles computed here independently: closed forms for 1 and 2 degrees of freedom, and a numerical
    # inversion of Student's t distribution function (Simpson's rule on the density) for the others.
    assert t975(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-9)
    assert t975(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), abs=1e-9)
    for df in (5, 12, 30, 31, 60, 120):
        assert t975(df) == pytest.approx(_t_quantile_975(df), abs=1.5e-3), df


def test_interval_over_seeds_has_the_bonferroni_quantile_of_two_degrees_of_freedom():
    r = interval_over_seeds([1.0, 2.0, 3.0], comparisons=10)          # mean 2, s = 1, n = 3
    p = 1 - 0.025 / 10                                                 # t_p with 2 df: (2p - 1) / sqrt(2 p (1 - p))
    assert r["ci95_bonferroni"] == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)) / math.sqrt(3), rel=1e-9)
    assert r["ci95"] == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)) / math.sqrt(3), rel=1e-9)
    assert not r["excludes_zero"]                                      # 2 < t(2) / sqrt(3) = 2.48
    tight = interval_over_seeds([1.9, 2.0, 2.1], comparisons=1000)    # 95%: 0.25; Bonferroni for 1,000: 8.2
    assert tight["excludes_zero"] and not tight["excludes_zero_bonferroni"]
    assert interval_over_seeds([1.0, 2.0, 3.0])["ci95_bonferroni"] == pytest.approx(r["ci95"])
    assert math.isnan(interval_over_seeds([0.4])["ci95_bonferroni"])
    with pytest.raises(ValueError, match="comparisons"):
        interval_over_seeds([1.0, 2.0], comparisons=0)


def _t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t: bisection on the CDF, the density integrated by Simpson's rule."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t, n=2000):
        h = t / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2
