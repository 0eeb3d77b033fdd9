"""A word-level tokenizer for digit prompts: "7", "seven", " Seven. " all name the digit 7.

The vocabulary is the ten digits, the ten number words, and one padding token per text
position. DALL-E learns a separate padding token for each of its 256 text positions (paper
section 2.2); we keep that choice: it costs a handful of embeddings and tells the model, at
every position, how far the prompt has ended, which a single shared pad token cannot.

Prompts are lower-cased and stripped of punctuation around and between words, so case and
punctuation never matter; a word outside the vocabulary is an error naming the word.
"""

import re

from errors import UserError

DIGITS = [str(d) for d in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class Tokenizer:
    def __init__(self, text_length):
        self.text_length = text_length
        self.words = DIGITS + WORDS
        self.vocabulary = self.words + [f"<pad{i}>" for i in range(text_length)]
        self.ids = {word: i for i, word in enumerate(self.words)}

    @property
    def vocab_size(self):
        return len(self.vocabulary)

    @staticmethod
    def split(prompt):
        """'  Seven. ' -> ['seven']: lower-case, punctuation dropped, split on whitespace."""
        return re.sub(r"[^\w\s]", " ", prompt.lower()).split()

    def encode(self, prompt):
        """A prompt -> text_length token ids, padded with one pad token per free position."""
        words = self.split(prompt)
        if not words:
            raise UserError(f"empty prompt {prompt!r}: give a digit such as '7' or a word such as 'seven'")
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise UserError(f"unknown word '{unknown[0]}' in prompt {prompt!r}; known words: {' '.join(self.words)}")
        if len(words) > self.text_length:
            raise UserError(f"prompt {prompt!r} has {len(words)} words but the model reads at most {self.text_length}")
        ids = [self.ids[w] for w in words]
        return ids + [len(self.words) + i for i in range(len(ids), self.text_length)]

    def decode(self, ids):
        """Token ids -> the prompt's words, padding dropped."""
        return " ".join(self.vocabulary[i] for i in ids if i < len(self.words))


def prompt_for_label(label, use_word):
    """A training prompt for a digit label, in either spelling: 7 -> "7" or "seven"."""
    return WORDS[label] if use_word else DIGITS[label]


def digit_of(word):
    """The digit a vocabulary word names: "seven" -> 7, "7" -> 7."""
    return int(word) if word in DIGITS else WORDS.index(word)
