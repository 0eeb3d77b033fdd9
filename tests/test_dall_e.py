import pytest
import torch
import torch.nn.functional as F

from captions import DATASETS, colourise
from config import DallEConfig, DVAEConfig
from dall_e import DallE, heldout_losses, sample_token
from data import to_float
from dvae import DiscreteVAE
from train_mnist import make_ema, tokenise_training_set


def small_model(text_length=2):
    torch.manual_seed(0)
    config = DallEConfig(text_length=text_length, n_layer=2, n_head=2, n_embd=32, conv_kernel=3)
    return DallE(config, DVAEConfig(codebook_size=12, grid_size=4, image_size=16), text_vocab_size=22)


def batch(model, size=4):
    text = torch.randint(0, 22, (size, model.config.text_length))
    return text, torch.randint(0, 12, (size, 16))


@pytest.mark.parametrize("weight", [1 / 8, 0.5])
def test_loss_is_weighted_text_and_image(weight):
    """The loss from its definition, one position at a time: position i predicts token i + 1 of
    [t_1..t_T, z_1..z_N]; text tokens through the text head, image tokens through the image head."""
    model = small_model(text_length=3).eval()  # no dropout: both computations see the same network
    text, image = batch(model)
    out = model(text, image, text_loss_weight=weight)
    sequence = torch.cat([text, image], dim=1)  # (B, T + N) the tokens themselves
    x = torch.cat([model.text_embedding(text), model.image_embedding(image[:, :-1])], dim=1)
    hidden = model.transformer(x)  # (B, T + N - 1, D)
    text_nll, image_nll = [], []
    for i in range(hidden.shape[1]):
        target = sequence[:, i + 1]
        if i + 1 < 3:
            text_nll.append(-F.log_softmax(model.text_head(hidden[:, i]), -1).gather(1, target[:, None]))
        else:
            image_nll.append(-F.log_softmax(model.image_head(hidden[:, i]), -1).gather(1, target[:, None]))
    assert len(text_nll) == 2 and len(image_nll) == 16
    text_loss, image_loss = torch.cat(text_nll).mean(), torch.cat(image_nll).mean()
    torch.testing.assert_close(out["text_loss"], text_loss)
    torch.testing.assert_close(out["image_loss"], image_loss)
    torch.testing.assert_close(out["loss"], weight * text_loss + (1 - weight) * image_loss)


def test_every_image_token_is_scored_by_the_image_head():
    model = small_model()
    text, image = batch(model)
    text_logits, image_logits = model.logits(text, image)
    assert text_logits.shape == (4, 1, 22)  # position 0 predicts text token 1
    assert image_logits.shape == (4, 16, 12)  # the last text position predicts image token 0
    changed = image.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 12
    assert model(text, changed)["image_loss"] != model(text, image)["image_loss"]


def test_the_first_image_token_is_learned_and_sampled_from_trained_logits():
    """The reference lesson never trains the logits its first image token is sampled from."""
    model = small_model()
    text, image = batch(model, size=2)
    image[:, 0] = torch.tensor([3, 7])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(text, image)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    first = model.eval().generate(text, top_k=1)[:, 0, 0]
    assert first.tolist() == [3, 7]


def test_cached_and_uncached_sampling_give_identical_tokens():
    model = small_model().eval()
    text, _ = batch(model, size=5)
    cached = model.generate(text, generator=torch.Generator().manual_seed(7))
    uncached = model.generate(text, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert cached.shape == (5, 4, 4)
    assert torch.equal(cached, uncached)


def test_top_k_is_a_count_of_tokens_kept():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]]).repeat(200, 1)
    generator = torch.Generator().manual_seed(0)
    assert sample_token(logits, 1.0, 1, generator=generator).eq(1).all()
    drawn = sample_token(logits, 1.0, 3, generator=generator)
    assert set(drawn.tolist()) <= {1, 2, 3}
    assert set(sample_token(logits, 100.0, None, generator=generator).tolist()) == {0, 1, 2, 3, 4}
    tied = torch.tensor([[2.0, 5.0, 5.0, 5.0, 1.0]]).repeat(200, 1)
    assert len(set(sample_token(tied, 1.0, 1, generator=generator).tolist())) == 1  # ties keep exactly k, not all tied
    assert len(set(sample_token(tied, 1.0, 2, generator=generator).tolist())) == 2


def test_coloured_digits_are_tokenised_in_every_colour():
    torch.manual_seed(0)
    dataset = DATASETS["color_mnist"]
    dvae = DiscreteVAE(DVAEConfig(channels=3, codebook_size=16, codebook_dim=8, hidden_dim=4)).eval()
    images = (torch.rand(4, 1, 32, 32) * 255).to(torch.uint8)
    codes = tokenise_training_set(dvae, images, torch.arange(4), "cpu", dataset)
    assert codes.shape == (4, 6, 64)
    blue = colourise(images, torch.full((4,), dataset.colours.index("blue")), dataset)
    assert torch.equal(codes[:, dataset.colours.index("blue")], dvae.encode(to_float(blue)).flatten(1))


def test_a_single_text_slot_still_gives_the_text_head_a_gradient():
    """With text_length 1 there is no text to predict; DistributedDataParallel still needs every weight
    in the graph, or it stops with 'Expected to have finished reduction'."""
    model = small_model(text_length=1)
    text, image = batch(model)
    model(text, image)["loss"].backward()
    assert model.text_head.weight.grad is not None and (model.text_head.weight.grad == 0).all()


def test_a_bf16_autocast_run_trains_and_keeps_the_loss_in_float32():
    model = small_model()
    text, image = batch(model, size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(text, image)
        assert out["loss"].dtype == torch.float32
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 weights


@pytest.mark.parametrize("text_length, image_length", [(2, 16), (4, 16), (3, 15), (3, 17)])
def test_wrong_sequence_lengths_are_refused(text_length, image_length):
    """A 2-token prompt on a 3-slot model would shift every position embedding and mask by one."""
    model = small_model(text_length=3)
    text, image = torch.zeros(2, text_length, dtype=torch.long), torch.zeros(2, image_length, dtype=torch.long)
    with pytest.raises(ValueError, match="built for"):
        model.logits(text, image)


def test_generate_refuses_wrong_prompt_and_primer_lengths():
    model = small_model(text_length=3).eval()
    with pytest.raises(ValueError, match="text tokens"):
        model.generate(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="P <= 16"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), prime=torch.zeros(2, 17, dtype=torch.long))
    assert model.generate(torch.zeros(2, 3, dtype=torch.long), prime=torch.zeros(2, 16, dtype=torch.long)).shape == (
        2,
        4,
        4,
    )


def test_the_moving_average_is_measured_without_dropout():
    """The EMA copy is a deep copy that model.eval() never reaches: with dropout on, two validation
    passes over the same data would differ."""
    model = small_model(text_length=3)
    model.config.dropout = 0.5
    model = DallE(model.config, DVAEConfig(codebook_size=12, grid_size=4, image_size=16), text_vocab_size=22)
    model.train()
    ema = make_ema(model, 0.9, resumed=None)
    text, image = batch(model, size=8)
    assert heldout_losses(ema.module, text, image) == heldout_losses(ema.module, text, image)
    assert model(text, image)["loss"] != model(text, image)["loss"]  # dropout is on in the trained model
