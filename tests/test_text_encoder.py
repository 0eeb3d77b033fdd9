"""The word-order text encoder: captions that differ only in word order get different embeddings."""

import pytest
import torch
import torch.nn.functional as F

from rerank import Reranker, RerankerConfig
from scene_grammar import all_specs, parse, phrasings, text_length, vocabulary
from text_encoder import TextEncoderShape, WordOrderEncoder, contrastive_loss
from tokenizer import Tokenizer

TOKENIZER = Tokenizer(vocabulary(), text_length())
SHAPE = TextEncoderShape(TOKENIZER.vocab_size, len(TOKENIZER.words), TOKENIZER.text_length)
SWAPPED = [
    ("a red three and a blue seven", "a blue three and a red seven"),
    ("a three above a seven", "a seven above a three"),
    ("a three to the left of a seven", "a seven to the left of a three"),
    ("an eight in green and a two in cyan", "an eight in cyan and a two in green"),
]


def encode(captions):
    return torch.tensor([TOKENIZER.encode(c) for c in captions])


def test_captions_that_differ_only_in_word_order_get_different_embeddings():
    torch.manual_seed(0)
    encoder = WordOrderEncoder(SHAPE).eval()
    bag = Reranker(RerankerConfig(SHAPE.vocab_size, SHAPE.num_words, SHAPE.text_length)).eval()
    for first, second in SWAPPED:
        text = encode([first, second])
        order = encoder(text)
        assert (order[0] - order[1]).norm() > 0.01, (first, second)  # untrained: apart, if not yet far apart
        words = bag.encode_text(text)  # the MNIST reranker's bag of words cannot tell them apart
        assert torch.allclose(words[0], words[1], atol=1e-6)


def test_padding_is_not_read_and_an_empty_prompt_still_has_an_embedding():
    torch.manual_seed(0)
    encoder = WordOrderEncoder(SHAPE).eval()
    text = encode(["a three above a seven", "two sixes"])
    before = encoder(text)
    with torch.no_grad():
        encoder.word_embedding.weight[SHAPE.num_words :] += 5.0  # the padding tokens' embeddings
    assert torch.allclose(encoder(text), before, atol=1e-5)
    empty = encoder(torch.tensor([TOKENIZER.null_prompt()]))
    assert torch.isfinite(empty).all() and torch.allclose(empty.norm(dim=-1), torch.ones(1))


@pytest.fixture
def one_thread():
    """Tiny models train far faster on one thread than on two a busy machine shares."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_contrastively_it_matches_each_caption_to_its_own_scene_not_the_swapped_one(one_thread):
    """A stand-in image side (one learned vector per Spec) and CLIP's loss: after 200 steps, each caption of a
    word-order pair is nearer its own scene than its partner's. A bag of words could only tie."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    specs = [s for s in all_specs() if s.relation or s.category == "colour_attr"]
    specs = [s for s in specs if {d.digit for d in s.digits} in ({3, 7}, {2, 8})]  # 76 scenes
    encoder = WordOrderEncoder(SHAPE)
    scenes = torch.nn.Embedding(len(specs), SHAPE.embed_dim)
    log_scale = torch.nn.Parameter(torch.tensor(2.3))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *scenes.parameters(), log_scale], lr=3e-3)
    for _ in range(200):
        index = torch.randint(len(specs), (64,), generator=generator)
        options = [phrasings(specs[i]) for i in index.tolist()]
        captions = [p[torch.randint(len(p), (), generator=generator)] for p in options]
        same = (index[:, None] == index[None, :]).float()
        loss = contrastive_loss(F.normalize(scenes(index), dim=-1), encoder(encode(captions)), same, log_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    where = {spec: i for i, spec in enumerate(specs)}
    with torch.no_grad():
        images = F.normalize(scenes.weight, dim=-1)
        for first, second in SWAPPED:
            text = encoder(encode([first, second]))
            own, other = (images[where[parse(c)]] for c in (first, second))
            assert (text[0] @ own > text[0] @ other) and (text[1] @ other > text[1] @ own), (first, second)
