import torch

from judge import Judge, frechet_distance


def test_frechet_distance_of_gaussians():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    assert frechet_distance(a, a) < 1e-6
    shifted = a + torch.tensor([2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, shifted) - 4.0) < 1e-3  # |mu_a - mu_b|^2, same covariance
    scaled = torch.randn(4000, 3) * 2.0
    # Tr(I + 4I - 2 * 2I) = 3 for unit vs doubled standard deviation, up to sampling noise
    assert abs(frechet_distance(a, scaled) - 3.0) < 0.4


def test_judge_shapes_for_grey_and_colour():
    judge = Judge().eval()
    assert judge(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert judge.features(torch.rand(2, 3, 32, 32)).shape == (2, 128)
