import torch

from common import encode_prompts
from data import load_mnist, to_float
from rerank import rerank, reranker_from_state, reranker_state
from tokenizer import DIGITS, WORDS, Tokenizer
from train_mnist import train_reranker


class FixedReranker:
    """Stands in for a trained reranker: fixed digit probabilities for each image."""

    def __init__(self, probabilities):
        self.probabilities = probabilities

    def digit_of(self, text):
        return text[:, 0]  # in these tests the first token id is the digit

    def digit_probabilities(self, images):
        return self.probabilities


def test_rerank_keeps_the_first_match_or_the_most_probable():
    candidates = 3
    text = torch.tensor([[7, 0], [2, 0]])
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)  # image i holds the value i
    p = torch.full((6, 10), 0.05)
    p[0, 7], p[1, 7], p[2, 7] = 0.2, 0.95, 0.97  # prompt 7: candidate 1 is the first above ACCEPT = 0.9
    p[3, 2], p[4, 2], p[5, 2] = 0.1, 0.3, 0.2  # prompt 2: none accepted, candidate 1 (0.3) is likeliest
    chosen = rerank(images, text, FixedReranker(p), candidates, keep="first")
    assert chosen.shape == (2, 1, 1, 1)
    assert chosen.flatten().tolist() == [1.0, 4.0]
    assert rerank(images, text, FixedReranker(p), candidates, keep="best").flatten().tolist() == [2.0, 4.0]


def test_reranker_learns_to_read_digits_and_survives_a_checkpoint(mnist_dir):
    images, labels = load_mnist(mnist_dir, True, 32, 1, log=lambda _: None)
    tokenizer = Tokenizer(2)
    prompt_ids = torch.stack([encode_prompts(tokenizer, DIGITS), encode_prompts(tokenizer, WORDS)], dim=1)
    reranker = train_reranker(images, labels, prompt_ids, tokenizer, "cpu", steps=150)
    assert torch.equal(reranker.digit_of(prompt_ids.flatten(0, 1)), torch.arange(10).repeat_interleave(2))
    x = to_float(images)
    probabilities = reranker.digit_probabilities(x)
    assert torch.allclose(probabilities.sum(1), torch.ones(len(x)), atol=1e-5)
    accuracy = (probabilities.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8, accuracy  # 400 training digits; chance is 0.1
    restored = reranker_from_state(reranker_state(reranker))
    assert torch.allclose(restored.digit_probabilities(x), probabilities)
