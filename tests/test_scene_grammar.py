"""The scene grammar: the forms issue 21 names, word order, the round trip, and bad prompts."""

import pytest

from conftest import assert_clean_error, run_script
from errors import UserError
from scene_grammar import Digit, Spec, all_specs, parse, phrasings, text_length, vocabulary
from tokenizer import Tokenizer

THREE, SEVEN = Digit(3), Digit(7)
FORMS = {
    "a seven": Spec((SEVEN,)),
    "a red seven": Spec((Digit(7, "red"),)),
    "a three and a seven": Spec((THREE, SEVEN)),
    "two sevens": Spec((SEVEN,) * 2),
    "three sevens": Spec((SEVEN,) * 3),
    "four sevens": Spec((SEVEN,) * 4),
    "a three to the left of a seven": Spec((THREE, SEVEN), "left"),
    "a three to the right of a seven": Spec((THREE, SEVEN), "right"),
    "a three above a seven": Spec((THREE, SEVEN), "above"),
    "a three below a seven": Spec((THREE, SEVEN), "below"),
    "a red three and a blue seven": Spec((Digit(3, "red"), Digit(7, "blue"))),
    "an eight": Spec((Digit(8),)),
    "an eight and a two": Spec((Digit(2), Digit(8))),
    "three sixes": Spec((Digit(6),) * 3),
}


@pytest.mark.parametrize("caption", FORMS)
def test_every_form_of_the_issue_parses_word_for_word(caption):
    assert parse(caption) == FORMS[caption]


def test_each_form_reads_as_its_category():
    categories = [parse(c).category for c in FORMS]
    assert categories[:4] == ["single_object", "colours", "two_object", "counting"]
    assert set(categories[6:10]) == {"position"} and categories[10] == "colour_attr"


def test_captions_that_differ_only_in_word_order_ask_for_different_scenes():
    pairs = [
        ("a red three and a blue seven", "a blue three and a red seven"),
        ("a three above a seven", "a seven above a three"),
        ("a three to the left of a seven", "a seven to the left of a three"),
        ("a red three to the left of a blue seven", "a blue three to the left of a red seven"),
    ]
    for first, second in pairs:
        assert parse(first) != parse(second), (first, second)
    assert parse("a three and a seven") == parse("a seven and a three")  # "and" has no order


def test_the_grammar_writes_an_before_eight_and_sixes_for_six():
    assert phrasings(Spec((Digit(8),)))[:2] == ["an eight", "an 8"]
    assert phrasings(Spec((Digit(8), Digit(2)), "above"))[0] == "an eight above a two"
    assert phrasings(Spec((Digit(6),) * 2))[0] == "two sixes"


def test_every_phrasing_of_every_spec_parses_back_to_its_spec():
    specs = all_specs()
    assert {s.category for s in specs} == {"single_object", "colours", "two_object", "counting", "position",
                                           "colour_attr"}  # fmt: skip
    words = set(vocabulary())
    for spec in specs:
        captions = phrasings(spec)
        assert len(captions) >= 3 and len(set(captions)) == len(captions)
        for caption in captions:
            assert parse(caption) == spec, caption
            assert set(Tokenizer.split(caption)) <= words
    assert text_length() == 11  # "the digit 3 in red and the digit 7 in blue" is the longest


@pytest.mark.parametrize(
    "caption, fragment",
    [
        ("a purple seven", "unknown word 'purple'"),
        ("five sevens", "counts run from two to four, as in 'four sevens'"),
        ("one seven", "a three and a seven"),
        ("a three to the left of", "as in 'a three to the left of a seven'"),
        ("a three above", "as in 'a three to the left of a seven'"),
        ("a three and a three", "'two threes'"),
        ("a three a seven", "expected 'and' or a relation"),
        ("", "'a red seven'"),
    ],
)
def test_a_bad_prompt_raises_one_line_naming_an_accepted_form(caption, fragment):
    with pytest.raises(UserError) as raised:
        parse(caption)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_the_command_line_reads_a_caption_or_says_in_one_line_why_not():
    good = run_script("scene_grammar.py", "a red three and a blue seven", "an eight above a 2")
    assert good.returncode == 0, good.stderr
    assert "colour_attr, red 3 and blue 7" in good.stdout and "position, 8 above 2" in good.stdout
    assert_clean_error(run_script("scene_grammar.py", "five sevens"), "counts run from two to four", "'four sevens'")
