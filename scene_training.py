"""What train_mnist.py does differently for --dataset scenes: its token grids, its reranker, its prompts.

Training scenes are composed, not tokenised one by one. The dVAE tokenises each 32x32 place of a
canvas on its own (dvae.py), so every training digit is tokenised once in each colour (white and the
palette) and an empty place once; a scene drawn by scenes.draw_training_scene (never a held-out
composition) takes, for each of its digits, a random training instance of that digit in its colour
and lays the four G x G grids of its places side by side (configs/scenes.yaml: 4x4 each, so an 8x8
grid, 64 tokens in raster order over the whole canvas): the tokens the dVAE gives the canvas painted
without jitter.

The reranker (rerank.SceneReranker) learns painted scenes, jitter included, against their captions,
with CLIP's symmetric loss (text_encoder.contrastive_loss), as train_mnist.train_reranker does.
"""

import torch
from einops import rearrange
from tqdm import tqdm

from captions import encode_prompts, phrasing_table
from data import to_float
from rerank import RerankerConfig, SceneReranker
from scene_grammar import CATEGORIES, FORMS, Spec, all_specs, phrasings
from scenes import OPPOSITE, PLACES, SCENES, draw_training_scene, held_out_specs, instances_by_digit
from text_encoder import contrastive_loss
from training import cosine

VALIDATION_SEED = 0  # the fixed draw of validation scenes every run measures


def blank_place(dvae, device):
    """(G*G,) the codes of an empty, black place."""
    S = dvae.config.image_size
    return dvae.encode(torch.zeros(1, dvae.config.channels, S, S, device=device)).flatten().cpu()


class SceneTokens:
    """Scenes as the transformer learns them, from digits tokenised once: codes (M, colours, G*G) of the
    digits with labels (M,) in each of SCENES.colours, and the blank place's codes (G*G,)."""

    def __init__(self, codes, labels, blank, tokenizer):
        self.codes = codes
        self.blank = blank
        self.tokenizer = tokenizer
        self.by_label = instances_by_digit(labels)

    def compose(self, contents, generator):
        """A scene's contents -> (N,) codes: each place's G x G grid, an instance of its digit or blank."""
        places = [self.blank] * PLACES
        for item in contents:
            pool = self.by_label[item.digit]
            instance = pool[torch.randint(len(pool), (), generator=generator)]
            places[item.place] = self.codes[instance, SCENES.colours.index(item.colour)]
        G = int(len(self.blank) ** 0.5)
        grids = torch.stack(places).view(2, 2, G, G)  # (rows of places, columns of places, G, G)
        return rearrange(grids, "r q h w -> (r h) (q w)").flatten()  # (N,) raster order over the canvas

    def pairs(self, size, generator):
        """size training scenes: captions (size, T) token ids and codes (size, N), and their Specs."""
        scenes = [draw_training_scene(generator) for _ in range(size)]
        codes = torch.stack([self.compose(contents, generator) for contents, _, _ in scenes])
        text = encode_prompts(self.tokenizer, [caption for _, _, caption in scenes])
        return text, codes, [spec for _, spec, _ in scenes]


def concept_key(spec):
    """The concept a Spec asks for: a relation is one with its mirror ("a 3 right of a 7" is "a 7 left of a 3")."""
    if spec.relation in ("right", "below"):
        first, second = spec.digits
        return Spec((second, first), OPPOSITE[spec.relation])
    return spec


def scene_concepts():
    """The reranker's concepts: (their keys, each one's phrasings, (concepts,) its category's index)."""
    groups = {}
    for spec in all_specs():
        groups.setdefault(concept_key(spec), []).extend(phrasings(spec))
    keys = list(groups)
    return keys, [groups[k] for k in keys], torch.tensor([CATEGORIES.index(k.category) for k in keys])


def train_scene_reranker(renderer, tokenizer, device, steps=600, batch_size=128, seed=0):
    """A SceneReranker trained contrastively on painted training scenes (scenes.Renderer) and their captions."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    keys, concept_phrasings, categories = scene_concepts()
    index_of = {key: i for i, key in enumerate(keys)}
    table = phrasing_table(tokenizer, concept_phrasings)  # (concepts, P, T)
    config = RerankerConfig(
        tokenizer.vocab_size, len(tokenizer.words), tokenizer.text_length, 3, *table.shape[:2], word_order=True
    )
    model = SceneReranker(config).to(device)
    model.captions.copy_(table)
    model.categories.copy_(categories)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in tqdm(range(steps), desc="training reranker", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cosine(2e-3, 0.0, step / steps)
        images, captions, specs = renderer.training_batch(batch_size, generator)
        concepts = torch.tensor([index_of[concept_key(spec)] for spec in specs])
        same = (concepts[:, None] == concepts[None, :]).float().to(device)  # pairs that share a concept
        image_embeddings = model.encode_image(to_float(images).to(device))  # (B, E)
        text_embeddings = model.encode_text(encode_prompts(tokenizer, captions).to(device))  # (B, E)
        loss = contrastive_loss(image_embeddings, text_embeddings, same, model.log_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False).freeze_concepts()
    return model


def scene_grid_prompts():
    """The grid drawn during training: one accepted form per category, then held-out compositions of three
    categories (counting, colour attribution, position)."""
    held_out = [phrasings(spec)[0] for spec in held_out_specs()]
    return [list(FORMS), held_out[::2][: len(FORMS)]]
