import pytest

from errors import UserError
from tokenizer import Tokenizer, digit_of


def test_spellings_case_and_punctuation_do_not_matter():
    tok = Tokenizer(2)
    assert tok.encode("seven") == tok.encode("Seven.") == tok.encode("  SEVEN!  ")
    assert tok.encode("7") == tok.encode(" 7 ") == tok.encode("'7'")
    assert tok.encode("7") != tok.encode("seven")  # two words, both mapped to the digit by training
    assert digit_of("seven") == digit_of("7") == 7


def test_each_padding_position_has_its_own_token():
    tok = Tokenizer(3)
    ids = tok.encode("3")
    assert len(ids) == 3
    assert len(set(ids[1:])) == 2
    assert all(tok.vocabulary[i].startswith("<pad") for i in ids[1:])
    assert tok.decode(ids) == "3"
    assert tok.vocab_size == 20 + 3


def test_unknown_word_names_the_word_and_the_vocabulary():
    with pytest.raises(UserError, match="unknown word 'eleven'.*zero one two"):
        Tokenizer(2).encode("eleven")


def test_empty_and_too_long_prompts():
    with pytest.raises(UserError, match="empty prompt"):
        Tokenizer(2).encode(" ... ")
    with pytest.raises(UserError, match="at most 2"):
        Tokenizer(2).encode("one two three")
