"""The words of a scene: a small grammar that writes captions for a scene and reads them back.

Six kinds of caption, GenEval's six categories (Ghosh et al. 2023), each in several phrasings:

    single_object   a seven · a 7 · the digit 7
    colours         a red seven · a red 7 · a seven in red · the digit 7 in red
    two_object      a three and a seven · a 3 with a 7 · the digit 7 and the digit 3
    counting        two sevens · 2 sevens · two 7s                    (two to four; "sixes")
    position        a three to the left of a seven · a three left of a seven · a three on the left of a
                    seven; the same with "right"; a three above (over) a seven; a three below (under) a seven
    colour_attr     a red three and a blue seven · a three in red with a seven in blue

Before "eight" and "8" the article is "an". `parse` reads a caption into a Spec, `phrasings` writes a
Spec's captions (the first is its canonical one), and `parse(p) == spec` for every phrasing p.

Word order carries meaning where the scene does: "a red three and a blue seven" binds red to the 3,
and "a three above a seven" puts the 3 on top. "and" itself does not: "a three and a seven" and "a
seven and a three" are the same Spec, so a two-digit Spec without a relation lists its digits in
increasing order.

    python scene_grammar.py "an eight above a 2"      # prints the Spec a caption asks for
"""

from dataclasses import dataclass

from captions import DIGITS, NUMBER_WORDS, PALETTE
from errors import ArgumentParser, UserError, run_main
from tokenizer import Tokenizer

CATEGORIES = ("single_object", "two_object", "counting", "colours", "position", "colour_attr")
RELATIONS = ("left", "right", "above", "below")  # digits[0] is <relation> digits[1]
COUNTS = (2, 3, 4)
PLURALS = tuple("sixes" if w == "six" else w + "s" for w in NUMBER_WORDS)
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
SHORT = {"left": "left of", "right": "right of", "above": "above", "below": "below"}  # for reasons and readings
JOINERS = ("and", "with")
FORMS = (
    "a seven",
    "a red seven",
    "a three and a seven",
    "two sevens",
    "a three to the left of a seven",
    "a red three and a blue seven",
)  # one accepted form per category, named in every error
DIGIT_OF = {w: d for d, w in enumerate(NUMBER_WORDS)} | {n: d for d, n in enumerate(DIGITS)}
COUNT_OF = {w: n for n, w in enumerate(NUMBER_WORDS)} | {n: int(n) for n in DIGITS}
PLURAL_OF = {w: d for d, w in enumerate(PLURALS)} | {f"{n}s": d for d, n in enumerate(DIGITS)}


@dataclass(frozen=True)
class Digit:
    digit: int
    colour: str | None = None  # a palette colour (captions.PALETTE), or None: the caption names none


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: its digits and the relation digits[0] bears to digits[1], if any.

    A count is k equal, uncoloured digits; two different digits without a relation are in increasing order.
    """

    digits: tuple
    relation: str | None = None

    @property
    def category(self):
        coloured = any(d.colour for d in self.digits)
        if self.relation:
            return "position"
        if len(self.digits) == 1:
            return "colours" if coloured else "single_object"
        if self.digits[0].digit == self.digits[1].digit:
            return "counting"
        return "colour_attr" if coloured else "two_object"

    def describe(self):
        """'red 3 left of 7', 'two 7s', ...: a short, unambiguous reading for people."""
        if self.category == "counting":
            return f"{NUMBER_WORDS[len(self.digits)]} {self.digits[0].digit}s"
        names = [f"{d.colour} {d.digit}" if d.colour else str(d.digit) for d in self.digits]
        joiner = f" {SHORT[self.relation]} " if self.relation else " and "
        return joiner.join(names)


def article(word):
    return "an" if word in ("eight", "8") else "a"


def noun_phrases(d):
    """One Digit's phrasings, in three styles: the word, the numeral, 'the digit'."""
    w, n, c = NUMBER_WORDS[d.digit], DIGITS[d.digit], d.colour
    if c is None:
        return [f"{article(w)} {w}", f"{article(n)} {n}", f"the digit {n}"]
    return [f"{article(c)} {c} {w}", f"{article(c)} {c} {n}", f"the digit {n} in {c}", f"{article(w)} {w} in {c}"]


def phrasings(spec):
    """Every caption of a Spec, the canonical one first."""
    if spec.category == "counting":
        k, d = NUMBER_WORDS[len(spec.digits)], spec.digits[0].digit
        return [f"{k} {PLURALS[d]}", f"{len(spec.digits)} {PLURALS[d]}", f"{k} {DIGITS[d]}s"]
    if len(spec.digits) == 1:
        return noun_phrases(spec.digits[0])
    first, second = (noun_phrases(d) for d in spec.digits)
    if spec.relation:
        return [f"{a} {r} {b}" for r in RELATION_WORDS[spec.relation] for a, b in zip(first, second)]
    pairs = list(zip(first, second)) + list(zip(second, first))
    return [f"{a} {j} {b}" for j in JOINERS for a, b in pairs]


def all_specs():
    """Every Spec the grammar can say: the categories' specs, coloured position specs excepted."""
    colours, digits = tuple(PALETTE), range(10)
    specs = [Spec((Digit(d),)) for d in digits] + [Spec((Digit(d, c),)) for d in digits for c in colours]
    specs += [Spec((Digit(d),) * k) for k in COUNTS for d in digits]
    pairs = [(a, b) for a in digits for b in digits if a < b]
    specs += [Spec((Digit(a), Digit(b))) for a, b in pairs]
    specs += [Spec((Digit(a, ca), Digit(b, cb))) for a, b in pairs for ca in colours for cb in colours if ca != cb]
    specs += [Spec((Digit(a), Digit(b)), r) for a in digits for b in digits if a != b for r in RELATIONS]
    return specs


def vocabulary():
    """Every word a caption may use, in a fixed order."""
    words = ["a", "an", "the", "digit", "in", *JOINERS, *PALETTE, *NUMBER_WORDS, *DIGITS, *PLURALS]
    words += [f"{n}s" for n in DIGITS] + ["to", "on", "of", "left", "right", "above", "over", "below", "under"]
    return words


def text_length():
    """The most words a caption of the grammar has."""
    return max(len(Tokenizer.split(p)) for spec in all_specs() for p in phrasings(spec))


def forms():
    return " · ".join(f"'{f}'" for f in FORMS)


def parse(caption):
    """A caption -> the Spec it asks for; UserError, one line naming an accepted form, if it is not one."""
    words = Tokenizer.split(caption)
    known = set(vocabulary())
    unknown = [w for w in words if w not in known]
    if unknown:
        raise UserError(f"unknown word '{unknown[0]}' in {caption!r}; captions look like {forms()}")
    if len(words) == 2 and words[0] in COUNT_OF and words[1] in PLURAL_OF:
        return _count(words, caption)
    first, rest = _noun_phrase(words, caption)
    if not rest:
        return Spec((first,))
    relation, rest = _joiner(rest, caption)
    if not rest:
        example = "a three to the left of a seven" if relation else "a three and a seven"
        raise UserError(f"{caption!r} names one digit; name one on each side, as in '{example}'")
    second, rest = _noun_phrase(rest, caption)
    if rest:
        raise UserError(f"cannot read {caption!r}: '{' '.join(rest)}' is left over; captions look like {forms()}")
    if first.digit == second.digit:
        name, plural = NUMBER_WORDS[first.digit], PLURALS[first.digit]
        raise UserError(f"{caption!r} names the {name} twice; say 'two {plural}', or 'a {name} and a seven'")
    pair = (first, second) if relation or first.digit < second.digit else (second, first)
    return Spec(pair, relation)


def trained_spec(caption):
    """A caption as the scenes model was trained on it -> its Spec: one of phrasings(spec), word for word, and
    no colour on a relation (training draws none); else UserError, one line naming an accepted form."""
    spec = parse(caption)
    if spec.relation and any(d.colour for d in spec.digits):
        raise UserError(f"{caption!r} colours the digits of a relation, which training never shows; as in '{FORMS[4]}'")
    if Tokenizer.split(caption) not in [Tokenizer.split(p) for p in phrasings(spec)]:
        raise UserError(f"the model was trained on other phrasings of {caption!r}, such as '{phrasings(spec)[0]}'")
    return spec


def _count(words, caption):
    count, digit = COUNT_OF[words[0]], PLURAL_OF[words[1]]
    if count not in COUNTS:
        raise UserError(f"cannot count {count} in {caption!r}: counts run from two to four, as in 'four sevens'")
    return Spec((Digit(digit),) * count)


def _noun_phrase(words, caption):
    """'a red seven ...' -> (Digit(7, 'red'), the words after it)."""
    i = 2 if words[:2] == ["the", "digit"] else 1 if words[:1] in (["a"], ["an"]) else 0
    colour = words[i] if i < len(words) and words[i] in PALETTE and words[:2] != ["the", "digit"] else None
    i += colour is not None
    if i == 0 or i >= len(words) or words[i] not in DIGIT_OF:
        raise UserError(f"cannot read {caption!r} as a scene; captions look like {forms()}")
    digit, rest = DIGIT_OF[words[i]], words[i + 1 :]
    if colour is None and len(rest) >= 2 and rest[0] == "in" and rest[1] in PALETTE:
        colour, rest = rest[1], rest[2:]
    return Digit(digit, colour), rest


def _joiner(words, caption):
    """'and a seven' / 'to the left of a seven' -> (relation or None, the words after it)."""
    if words[0] in JOINERS:
        return None, words[1:]
    for relation, phrases in RELATION_WORDS.items():
        for phrase in phrases:
            n = len(phrase.split())
            if words[:n] == phrase.split():
                return relation, words[n:]
    raise UserError(f"cannot read {caption!r}: expected 'and' or a relation before '{words[0]}'; as in {forms()}")


def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("caption", nargs="+", help="one or more captions to read")
    for caption in parser.parse_args().caption:
        spec = parse(caption)
        print(f"{caption!r}: {spec.category}, {spec.describe()}")


if __name__ == "__main__":
    run_main(main)
