import pytest

from captions import DATASETS
from errors import UserError
from tokenizer import Tokenizer

WORDS = DATASETS["mnist"].words()


def test_case_and_punctuation_do_not_matter_but_hyphens_inside_words_stay():
    tok = Tokenizer(WORDS, 3)
    assert tok.encode("seven") == tok.encode("Seven.") == tok.encode("  SEVEN!  ")
    assert tok.encode("the digit 7") == tok.encode("The digit, 7!")
    assert tok.encode("7") != tok.encode("seven")  # two words, both mapped to the digit by training
    assert Tokenizer.split("an ankle-boot, please") == ["an", "ankle-boot", "please"]
    assert Tokenizer.split("-7- ...") == ["7"]


def test_the_vocabulary_comes_from_the_words_given():
    assert Tokenizer(["red", "7"], 2).vocabulary == ["red", "7", "<pad0>", "<pad1>"]
    with pytest.raises(UserError, match="unknown word 'seven'"):
        Tokenizer(["red", "7"], 2).encode("red seven")


def test_each_padding_position_has_its_own_token():
    tok = Tokenizer(WORDS, 3)
    ids = tok.encode("3")
    assert len(ids) == 3
    assert len(set(ids[1:])) == 2
    assert all(tok.vocabulary[i].startswith("<pad") for i in ids[1:])
    assert tok.decode(ids) == "3"
    assert tok.vocab_size == len(WORDS) + 3


def test_unknown_word_names_the_word_and_the_vocabulary():
    with pytest.raises(UserError, match="unknown word 'eleven'.*known words: 0 zero a the digit"):
        Tokenizer(WORDS, 2).encode("eleven")


def test_empty_and_too_long_prompts():
    with pytest.raises(UserError, match="empty prompt"):
        Tokenizer(WORDS, 2).encode(" ... ")
    with pytest.raises(UserError, match="at most 2"):
        Tokenizer(WORDS, 2).encode("one two three")
