"""A word-level tokenizer: "a red 7", "A red 7." and " a  RED 7 " are the same three words.

The words come from the dataset's captions (captions.py), never from this file, followed by one
padding token per text position. DALL-E learns a separate padding token for each of its 256
text positions (paper section 2.2); we keep that choice: it costs a handful of embeddings and
tells the model, at every position, how far the prompt has ended, which a single shared pad
token cannot.

Prompts are lower-cased and stripped of punctuation around and between words (a hyphen inside a
word stays: "t-shirt"), so case and punctuation never matter; a word outside the vocabulary is an
error naming the word.
"""

import re

from errors import UserError, shorten


class Tokenizer:
    def __init__(self, words, text_length):
        self.text_length = text_length
        self.words = list(words)
        self.vocabulary = self.words + [f"<pad{i}>" for i in range(text_length)]
        self.ids = {word: i for i, word in enumerate(self.words)}

    @property
    def vocab_size(self):
        return len(self.vocabulary)

    @staticmethod
    def split(prompt):
        """'  A Red-ish 7. ' -> ['a', 'red-ish', '7']: lower-case, punctuation dropped, split on whitespace."""
        spaced = re.sub(r"[^\w\s-]", " ", prompt.lower()).split()
        return [word for word in (w.strip("-") for w in spaced) if word]

    def encode(self, prompt):
        """A prompt -> text_length token ids, padded with one pad token per free position."""
        words = self.split(prompt)
        if not words:
            raise UserError(f"empty prompt {shorten(prompt)!r}: give a prompt such as '{self.words[0]}'")
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise UserError(
                f"unknown word {shorten(unknown[0])!r} in prompt {shorten(prompt)!r}; "
                f"known words: {' '.join(self.words)}"
            )
        if len(words) > self.text_length:
            raise UserError(
                f"prompt {shorten(prompt)!r} has {len(words)} words but the model reads at most {self.text_length}"
            )
        ids = [self.ids[w] for w in words]
        return ids + [len(self.words) + i for i in range(len(ids), self.text_length)]

    def null_prompt(self):
        """The empty prompt, all padding: what classifier-free guidance conditions on (dall_e.py)."""
        return [len(self.words) + i for i in range(self.text_length)]

    def decode(self, ids):
        """Token ids -> the prompt's words, padding dropped."""
        return " ".join(self.vocabulary[i] for i in ids if i < len(self.words))
