import torch

from captions import DATASETS, caption_table, colourise, concept_index
from checkpoints import reranker_from_checkpoint
from data import load_images, to_float
from rerank import Reranker, RerankerConfig, reranker_from_state, reranker_state
from train_mnist import train_reranker


def trained_reranker(name, images, labels, steps):
    dataset = DATASETS[name]
    tokenizer = dataset.tokenizer()
    captions = caption_table(dataset, tokenizer)
    shape = RerankerConfig(tokenizer.vocab_size, len(tokenizer.words), tokenizer.text_length, dataset.channels,
                          *captions.shape[:2])  # fmt: skip
    return train_reranker(images, labels, dataset, captions, shape, "cpu", steps=steps), dataset, captions


def test_reranker_reads_any_phrasing_and_survives_a_checkpoint(mnist_dir):
    images, labels = load_images("mnist", mnist_dir, True, 32, log=lambda _: None)
    reranker, dataset, captions = trained_reranker("mnist", images, labels, steps=150)
    every_phrasing = captions.flatten(0, 1)  # (concepts * P, T)
    assert torch.equal(reranker.concept_of(every_phrasing), torch.arange(10).repeat_interleave(captions.shape[1]))
    held_out, held_out_labels = load_images("mnist", mnist_dir, False, 32, log=lambda _: None)  # never trained on
    x = to_float(held_out)
    probabilities = reranker.concept_probabilities(x)
    assert torch.allclose(probabilities.sum(1), torch.ones(len(x)), atol=1e-5)
    accuracy = (probabilities.argmax(1) == held_out_labels).float().mean().item()
    assert accuracy > 0.7, accuracy  # 100 held-out digits after 150 steps on 400; chance is 0.1
    restored = reranker_from_state(reranker_state(reranker))
    assert torch.allclose(restored.concept_probabilities(x), probabilities)


def test_colour_reranker_reads_the_colour_of_images_it_trained_on(mnist_dir):
    images, labels = load_images("mnist", mnist_dir, True, 32, log=lambda _: None)
    reranker, dataset, _ = trained_reranker("color_mnist", images, labels, steps=150)
    colour = torch.arange(len(images)) % len(dataset.colours)
    probabilities = reranker.concept_probabilities(to_float(colourise(images, colour, dataset)))
    read_colour = probabilities.argmax(1) % len(dataset.colours)
    assert (read_colour == colour).float().mean() > 0.9
    concept = concept_index(dataset, labels, colour)
    assert (probabilities.argmax(1) == concept).float().mean() > 0.3  # 60 concepts: chance is 1/60


def test_a_reranker_saved_before_word_order_existed_still_loads():
    """Checkpoints from before `word_order` (scenes) store the reranker's config without it."""
    config = RerankerConfig(vocab_size=12, num_words=9, text_length=3)
    state = reranker_state(Reranker(config))
    del state["shape"]["word_order"]
    loaded = reranker_from_checkpoint({"reranker": state}, "old.pt")
    assert isinstance(loaded, Reranker) and not loaded.config.word_order
