"""Sampling after the paper: nucleus sampling, classifier-free guidance, image completion, reranking in rounds."""

import math

import pytest
import torch

import dall_e
from config import DallEConfig, DVAEConfig
from dall_e import DallE, filtered_probabilities, sample_token
from dvae import DiscreteVAE
from sampling import completion_prime, first_accepted
from tokenizer import Tokenizer
from train_mnist import drop_prompts


def small_model(text_length=2, vocab=22):
    torch.manual_seed(0)
    config = DallEConfig(text_length=text_length, n_layer=2, n_head=2, n_embd=32, conv_kernel=3)
    return DallE(config, DVAEConfig(codebook_size=12, grid_size=4, image_size=16), text_vocab_size=vocab).eval()


def prompts(size=3, text_length=2, words=20):
    return torch.randint(0, words, (size, text_length), generator=torch.Generator().manual_seed(1))


def full_pass_logits(model, text, tokens):
    """(B, N, K) image logits of a whole sequence run at once, no cache: the reference."""
    _, image_logits = model.logits(text, tokens.flatten(1))
    return image_logits


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.allclose(filtered_probabilities(logits, top_p=0.75), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(filtered_probabilities(logits, top_p=0.85), torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    assert torch.allclose(filtered_probabilities(logits, top_p=0.4), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(filtered_probabilities(logits, top_p=1.0), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def test_top_p_composes_with_temperature_and_top_k():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    hot = torch.tensor([0.5, 0.3, 0.15, 0.05]) ** 0.5  # temperature 2: p ** (1/2), renormalised
    hot = hot / hot.sum()  # 0.398, 0.309, 0.218, 0.126
    kept = hot[:3] / hot[:3].sum()  # top_p 0.8 needs three codes at temperature 2 (0.398 + 0.309 < 0.8)
    assert torch.allclose(filtered_probabilities(logits, 2.0, top_p=0.8)[0, :3], kept)
    assert torch.allclose(
        filtered_probabilities(logits, 2.0, top_k=2, top_p=0.99)[0],
        torch.cat([hot[:2] / hot[:2].sum(), torch.zeros(2)]),
    )


def test_sampled_tokens_follow_the_filtered_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(40_000, 1)
    drawn = sample_token(logits, top_p=0.85, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(drawn, minlength=4).float() / len(drawn)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert share[3] == 0  # outside the nucleus: never drawn
    assert (share - expected).abs().max() < 0.01  # about 4 standard errors


def test_null_prompt_is_the_tokenizers_empty_prompt():
    tokenizer = Tokenizer([f"w{i}" for i in range(20)], text_length=2)
    model = small_model(vocab=tokenizer.vocab_size)
    assert model.null_text(3).tolist() == [tokenizer.null_prompt()] * 3


def generate_watching_logits(model, text, **options):
    """model.generate(text, **options) -> (tokens (B, G, G), the logits each token was drawn from (B, n, K))."""
    seen = []

    def watch(logits, *args, **kwargs):
        seen.append(logits)
        return real_sample_token(logits, *args, **kwargs)

    real_sample_token = dall_e.sample_token
    dall_e.sample_token = watch
    try:
        tokens = model.generate(text, **options)
    finally:
        dall_e.sample_token = real_sample_token
    return tokens, torch.stack(seen, dim=1) if seen else torch.empty(len(text), 0, 0)


def test_guidance_one_is_plain_sampling():
    model, text = small_model(), prompts()
    plain = model.generate(text, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.generate(text, guidance=1.0, generator=torch.Generator().manual_seed(3)), plain)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_guided_logits_combine_the_prompt_and_the_empty_prompt_at_every_step(use_cache, scale):
    """The null half must see the empty prompt and keep its own keys and values at every step: its
    logits are checked against a full, uncached pass of [empty prompt | the tokens drawn]."""
    model, text = small_model(), prompts()
    tokens, logits = generate_watching_logits(
        model, text, guidance=scale, use_cache=use_cache, generator=torch.Generator().manual_seed(0)
    )
    cond = full_pass_logits(model, text, tokens)  # (B, N, K)
    uncond = full_pass_logits(model, model.null_text(len(text)), tokens)
    assert torch.allclose(logits, uncond + scale * (cond - uncond), atol=1e-4)
    assert ((cond - uncond).abs().amax(dim=-1) > 1e-3).all()  # the halves differ at every image position


def test_guided_cached_and_uncached_sampling_agree():
    model, text = small_model(), prompts(size=4)
    cached = model.generate(text, guidance=2.5, top_p=0.9, generator=torch.Generator().manual_seed(5))
    uncached = model.generate(
        text, guidance=2.5, top_p=0.9, generator=torch.Generator().manual_seed(5), use_cache=False
    )
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("rows", [0, 1, 3, 4])
def test_completion_keeps_the_primer_rows_and_draws_the_rest_after_them(rows):
    model, text = small_model(), prompts()
    prime = torch.randint(0, 12, (3, rows * 4), generator=torch.Generator().manual_seed(2))
    tokens, logits = generate_watching_logits(model, text, prime=prime, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens.flatten(1)[:, : rows * 4], prime)
    assert logits.shape[1] == 16 - rows * 4  # only the free cells are drawn
    if rows < 4:
        reference = full_pass_logits(model, text, tokens)[:, rows * 4 :]
        assert torch.allclose(logits, reference, atol=1e-4)
    uncached = model.generate(text, prime=prime, generator=torch.Generator().manual_seed(0), use_cache=False)
    assert torch.equal(tokens, uncached)


class FakeModel:
    """Draws images whose single pixel counts the draws: 1, 2, 3, ... in order."""

    def __init__(self):
        self.drawn = 0
        self.batch_sizes = []

    def generate(self, text, prime=None, generator=None, **sampling):
        self.batch_sizes.append(len(text))
        codes = torch.arange(self.drawn + 1, self.drawn + 1 + len(text)).float()
        self.drawn += len(text)
        return codes


class IdentityDecoder:
    def decode(self, codes):
        return codes.view(-1, 1, 1, 1)


class PixelReranker:
    """Accepts an image by a table of pixel value -> probability of the wanted concept."""

    def __init__(self, table):
        self.table = table

    def concept_of(self, text):
        return torch.zeros(len(text), dtype=torch.long)

    def concept_probabilities(self, images):
        p = torch.tensor([self.table.get(int(v), 0.0) for v in images.flatten()])
        return torch.stack([p, 1 - p], dim=1)


def test_rounds_of_reranking_choose_as_drawing_all_candidates_would():
    """Prompt 0 accepts its 1st draw, prompt 1 its 2nd, prompt 2 none (its likeliest is the 2nd)."""
    # round 1 draws pixels 1, 2, 3; round 2 draws 4 (prompt 1), 5 (prompt 2); round 3 draws 6 (prompt 2)
    table = {1: 0.95, 2: 0.5, 3: 0.1, 4: 0.97, 5: 0.6, 6: 0.2}
    model, text = FakeModel(), torch.zeros(3, 2, dtype=torch.long)
    kept = first_accepted(model, IdentityDecoder(), text, None, None, PixelReranker(table), candidates=3)
    assert kept.flatten().tolist() == [1.0, 4.0, 5.0]
    assert model.batch_sizes == [3, 2, 1]  # an accepted prompt stops drawing


def test_training_replaces_the_prompt_by_the_empty_prompt_at_the_configured_rate():
    text = torch.zeros(20_000, 3, dtype=torch.long)
    null = torch.tensor([7, 8, 9])
    dropped = drop_prompts(text, null, 0.1, torch.Generator().manual_seed(0))
    is_null = (dropped == null).all(dim=1)
    assert abs(is_null.float().mean().item() - 0.1) < 0.01
    assert (dropped[~is_null] == 0).all()  # the others untouched
    assert torch.equal(drop_prompts(text, null, 0.0, torch.Generator().manual_seed(0)), text)
    assert math.isclose(is_null.float().mean().item(), 0.1, abs_tol=0.01)


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_the_prime_does_not_see_the_rows_it_is_asked_to_complete(rows):
    """Tokens encoded from the whole image carry the hidden part (the encoder reaches far below a
    cell); the prime is encoded from the image with the hidden rows blanked."""
    torch.manual_seed(0)
    dvae = DiscreteVAE(DVAEConfig(codebook_size=16, codebook_dim=8, hidden_dim=4, num_resnet_blocks=1)).eval()
    S, G = dvae.config.image_size, dvae.config.grid_size
    image = torch.rand(16, 1, S, S, generator=torch.Generator().manual_seed(1))  # 16 images, one prime each
    other_bottom = image.clone()
    other_bottom[..., rows * S // G :, :] = torch.rand(16, 1, S - rows * S // G, S)
    prime = completion_prime(dvae, image, rows)
    assert prime.shape == (16, rows * G)
    assert torch.equal(completion_prime(dvae, other_bottom, rows), prime)
    other_top = image.clone()
    other_top[..., : rows * S // G, :] = torch.rand(16, 1, rows * S // G, S)
    assert not torch.equal(completion_prime(dvae, other_top, rows), prime)  # the kept rows do matter
    whole = dvae.encode(image).flatten(1)[:, : rows * G]
    assert not torch.equal(dvae.encode(other_bottom).flatten(1)[:, : rows * G], whole)  # the bug this guards
