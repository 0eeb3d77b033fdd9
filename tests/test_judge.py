import pytest
import torch

from captions import DATASETS
from evaluate import measure_draws, nearest_training_distance
from judge import RECIPES, Judge, StridedJudge, frechet_distance, unsure_share


def test_frechet_distance_of_gaussians():
    torch.manual_seed(0)
    a = torch.randn(4000, 3)
    assert frechet_distance(a, a) < 1e-6
    shifted = a + torch.tensor([2.0, 0.0, 0.0])
    assert abs(frechet_distance(a, shifted) - 4.0) < 1e-3  # |mu_a - mu_b|^2, same covariance
    scaled = torch.randn(4000, 3) * 2.0
    # Tr(I + 4I - 2 * 2I) = 3 for unit vs doubled standard deviation, up to sampling noise
    assert abs(frechet_distance(a, scaled) - 3.0) < 0.4


def test_both_judges_take_grey_and_colour_and_differ_in_kind():
    for judge in (Judge().eval(), StridedJudge().eval()):
        assert judge(torch.rand(2, 1, 32, 32)).shape == (2, 10)
        assert judge.features(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    layers = [{type(m) for m in make().modules()} for make, *_ in RECIPES.values()]
    assert torch.nn.MaxPool2d in layers[0] and torch.nn.MaxPool2d not in layers[1]
    assert torch.nn.GroupNorm in layers[1] and RECIPES["A"][1:3] != RECIPES["B"][1:3]  # augmentation and seed


def test_unsure_share_counts_images_below_the_threshold():
    probabilities = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
    assert unsure_share(probabilities) == 0.5  # 0.9 itself is sure


def test_copies_of_training_digits_are_counted_as_near_copies():
    generator = torch.Generator().manual_seed(0)
    train = (torch.rand(200, 1, 32, 32, generator=generator) * 255).to(torch.uint8)
    train_labels = torch.arange(200) % 10
    real = torch.rand(50, 1, 32, 32, generator=generator)
    real_labels = torch.arange(50) % 10
    assert torch.allclose(
        nearest_training_distance(train[:10].float() / 255, train_labels[:10], train, train_labels), torch.zeros(10)
    )
    copies = torch.cat([train[:20].float() / 255, torch.ones(20, 1, 32, 32)])  # 20 copies, 20 far from any digit
    digits = torch.cat([train_labels[:20], real_labels[:20]])
    real_distances = nearest_training_distance(real, real_labels, train, train_labels)
    prompted = (digits, torch.zeros_like(digits))
    figures = measure_draws(copies, prompted, DATASETS["mnist"], {}, real_distances, (train, train_labels))
    assert figures["near_copies"] == 0.5


def test_frechet_distance_with_covariances_that_do_not_commute():
    """Against an independent route to Tr((S_a S_b)^(1/2)): the eigenvalues of the (non-symmetric)
    product S_a S_b. With commuting covariances a wrong Tr(S_a^(1/2) S_b^(1/2)) would also pass."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 4, generator=generator, dtype=torch.float64) @ torch.randn(
        4, 4, generator=generator, dtype=torch.float64
    )
    b = (
        torch.randn(3000, 4, generator=generator, dtype=torch.float64)
        @ torch.randn(4, 4, generator=generator, dtype=torch.float64)
        + 1
    )
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    assert not torch.allclose(cov_a @ cov_b, cov_b @ cov_a, atol=0.1)  # they do not commute
    cross = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0).sqrt().sum()
    expected = (a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-6)

    def sqrt_psd(m):
        values, vectors = torch.linalg.eigh(m)
        return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T

    wrong = expected + 2 * cross - 2 * (sqrt_psd(cov_a) @ sqrt_psd(cov_b)).trace()
    assert abs(float(wrong - expected)) > 0.01 * float(expected)  # the test tells the wrong formula apart
