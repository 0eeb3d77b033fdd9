import dataclasses
import sys

import pytest
import torch

import train_dvae
from checkpoints import dvae_from_checkpoint, load_checkpoint, save_checkpoint
from config import DVAEConfig, DVAETrainConfig, load_config
from data import load_images, to_float
from dvae import DiscreteVAE, codebook_usage
from train_dvae import schedules

SMALL = dict(codebook_size=16, codebook_dim=8, hidden_dim=4)


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_decode_shapes(channels):
    model = DiscreteVAE(DVAEConfig(channels=channels, **SMALL))
    images = torch.rand(5, channels, 32, 32)
    codes = model.encode(images)
    assert codes.shape == (5, 8, 8)
    assert codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 16
    decoded = model.decode(codes)
    assert decoded.shape == (5, channels, 32, 32)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_other_grids_and_sizes():
    model = DiscreteVAE(DVAEConfig(image_size=64, grid_size=8, **SMALL))
    assert model.encode(torch.rand(2, 1, 64, 64)).shape == (2, 8, 8)
    model = DiscreteVAE(DVAEConfig(image_size=32, grid_size=16, **SMALL))
    assert model.encode(torch.rand(2, 1, 32, 32)).shape == (2, 16, 16)


def test_wrong_channels_fail_with_a_message():
    model = DiscreteVAE(DVAEConfig(channels=3, **SMALL))
    with pytest.raises(ValueError, match="built for"):
        model.encode(torch.rand(2, 1, 32, 32))


def test_temperature_and_kl_schedules():
    t = DVAETrainConfig(num_training_steps=1000, temperature_anneal_fraction=0.5, kl_warmup_fraction=0.1, kl_weight=2.0)
    temperatures = [schedules(t, s)[0] for s in range(0, 1001, 50)]
    kl_weights = [schedules(t, s)[1] for s in range(0, 1001, 50)]
    assert temperatures[0] == pytest.approx(1.0)
    assert schedules(t, 500)[0] == pytest.approx(1 / 16)  # reached at the end of the anneal ...
    assert schedules(t, 999)[0] == pytest.approx(1 / 16)  # ... and held there
    assert all(a >= b for a, b in zip(temperatures, temperatures[1:]))
    assert kl_weights[0] == 0.0
    assert schedules(t, 50)[1] == pytest.approx(1.0)  # halfway up the 100-step ramp
    assert schedules(t, 100)[1] == pytest.approx(2.0)
    assert all(a <= b for a, b in zip(kl_weights, kl_weights[1:]))
    assert schedules(t, 0)[2] == pytest.approx(t.learning_rate)
    assert schedules(t, 1000)[2] == pytest.approx(t.min_learning_rate)


def test_kl_is_zero_for_uniform_codes_and_positive_otherwise():
    model = DiscreteVAE(DVAEConfig(**SMALL))
    images = torch.rand(2, 1, 32, 32)
    for p in model.encoder.net[-1].parameters():
        torch.nn.init.zeros_(p)  # all-zero logits: q is uniform
    assert model(images, 1.0, 1.0)["kl"].item() == pytest.approx(0.0, abs=1e-3)
    torch.nn.init.normal_(model.encoder.net[-1].weight)
    assert model(images, 1.0, 1.0)["kl"].item() > 0.01


def test_reconstruction_loss_falls_on_a_tiny_batch(mnist_dir):
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(**SMALL))
    images = to_float(load_images("mnist", mnist_dir, True, 32, log=lambda _: None)[0][:8])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(images, 1.0, 0.0)
        optimizer.zero_grad()
        out["reconstruction"].backward()
        optimizer.step()
        losses.append(out["reconstruction"].item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_codebook_usage():
    assert codebook_usage(torch.tensor([0, 1, 2, 3]), 8) == (4, pytest.approx(4.0))
    assert codebook_usage(torch.tensor([5, 5, 5]), 8) == (1, pytest.approx(1.0))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    config = DVAEConfig(**SMALL)
    model = DiscreteVAE(config).eval()
    path = tmp_path / "dvae.pt"
    save_checkpoint({"kind": "dvae", "dvae_config": dataclasses.asdict(config), "model": model.state_dict()}, path)
    restored = dvae_from_checkpoint(load_checkpoint(path, "dvae"))
    images = torch.rand(3, 1, 32, 32)
    assert torch.equal(model.encode(images), restored.encode(images))
    codes = model.encode(images)
    assert torch.equal(model.decode(codes), restored.decode(codes))


def test_kl_matches_torch_distributions_summed_over_cells_and_averaged_over_images():
    """forward's KL is KL(q(z|x) || uniform) per grid cell, summed over the cells, averaged over images."""
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(**SMALL))
    torch.nn.init.normal_(model.encoder.net[-1].weight)  # far from uniform
    images = torch.rand(3, 1, 32, 32)
    logits = model.relaxed(images, 1.0)[1].float()  # (B, K, G, G)
    q = torch.distributions.Categorical(logits=logits.movedim(1, -1))  # batch shape (B, G, G)
    uniform = torch.distributions.Categorical(logits=torch.zeros_like(logits.movedim(1, -1)))
    expected = torch.distributions.kl_divergence(q, uniform).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(model(images, 1.0, 1.0)["kl"], expected, rtol=1e-4, atol=1e-4)


def test_the_annealed_tau_reaches_gumbel_softmax_in_float32(monkeypatch, tmp_path, mnist_dir, tiny_config):
    """The reference lesson computed an annealed temperature and never passed it. Each training step
    must hand gumbel_softmax the schedule's tau, and (under bf16 autocast too) float32 logits: at
    tau = 1/16 bf16 would quantise the relaxed sample coarsely."""
    seen = []
    real = torch.nn.functional.gumbel_softmax

    def spy(logits, tau, **kwargs):
        seen.append((tau, logits.dtype))
        return real(logits, tau=tau, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", spy)
    argv = ["train_dvae.py", "--config_path", str(tiny_config), "--data_dir", str(mnist_dir), "--device", "cpu",
            "--precision", "bf16", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    train_dvae.main()
    t = load_config(tiny_config).train_dvae
    expected = [schedules(t, step)[0] for step in range(t.num_training_steps)]
    assert [tau for tau, _ in seen] == pytest.approx(expected)
    assert len(set(expected)) == len(expected)  # the schedule does move: a constant tau would fail
    assert all(dtype == torch.float32 for _, dtype in seen)
