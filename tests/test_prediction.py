import pytest
import torch

from smoothlib.prediction import predict_x0, training_target, x0_and_eps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_target_then_prediction_recovers_x0_and_eps(prediction_type):
    x0, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    a = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    ab = a.reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = training_target(x0, eps, a, prediction_type)
    x0_hat, eps_hat = x0_and_eps(out, x_t, a, prediction_type)
    assert torch.allclose(x0_hat, x0) and torch.allclose(eps_hat, eps)


def test_bad_prediction_type():
    with pytest.raises(ValueError, match="unsupported prediction_type 'x'"):
        predict_x0(torch.zeros(1), torch.zeros(1), 0.5, "x")
