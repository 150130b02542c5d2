"""The subject of a referring expression: its head noun, and the COCO category it names.

Stage-1 synthesis of ReferDiffusion writes prompts such as "paint a sandwich on the blue mask": it
needs the noun a person used for the object ("sandwich" from "a sandwich on the right", "man" from
"left man in blue"). The rule here is small on purpose, and works without a parser:

1. The *head segment* is the part before the first relational word ("on", "with", "holding",
   "that", ...): English noun phrases put the head noun there ("man" in "man on the left").
2. The head is the *last* known noun of that segment (known: the 80 COCO category names, a table of
   synonyms, plus any category names the dataset adds, such as RefShapes' "circle"): English puts
   modifiers first ("blue shirt guy" -> guy, "baby elephant" -> elephant).
3. Otherwise the first known noun anywhere ("on the left, a dog" -> dog), then the category name the
   caller knows, then the first noun-like word of the head segment (one not in the stop, colour,
   location, size or generic-word lists), then None.

The same vocabularies (colour, location, ordinal and size words) say which words of an expression
identify its object; the LLM validation checks that a rephrasing keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# word (singular) -> COCO category. Words people use in RefCOCO for objects of each category.
_SYNONYM_GROUPS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "guy", "lady", "kid", "child", "boy", "girl", "baby", "people",
               "player", "dude", "gentleman", "gal", "batter", "catcher", "umpire", "ump", "skier",
               "snowboarder", "surfer", "skateboarder", "pitcher", "chef", "cop", "officer", "mom",
               "dad", "mother", "father", "bride", "groom", "teen", "teenager", "toddler", "adult",
               "human", "worker", "biker", "rider", "referee", "fielder", "goalie", "passenger",
               "spectator", "cook", "waiter", "waitress", "soldier", "student", "boy", "daughter",
               "son", "grandma", "grandpa", "infant", "male", "female", "player", "athlete",
               "blonde", "brunette", "fan", "ref", "cyclist", "policeman", "customer"),
    "bicycle": ("bike", "cycle"),
    "car": ("taxi", "cab", "suv", "van", "sedan", "jeep", "minivan"),
    "motorcycle": ("motorbike", "scooter", "moped"),
    "airplane": ("plane", "jet", "aircraft", "airliner", "aeroplane"),
    "train": ("locomotive", "tram"),
    "truck": ("lorry", "pickup"),
    "boat": ("ship", "canoe", "kayak", "sailboat", "yacht"),
    "traffic light": ("stoplight",),
    "bird": ("duck", "pigeon", "seagull", "gull", "goose", "parrot"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"),
    "horse": ("pony",),
    "sheep": ("lamb", "ram"),
    "cow": ("cattle", "bull", "calf", "ox"),
    "teddy bear": ("teddy",),
    "handbag": ("purse", "bag"),
    "umbrella": ("parasol",),
    "tie": ("necktie",),
    "suitcase": ("luggage",),
    "skis": ("ski",),
    "sports ball": ("ball", "football", "soccer ball", "basketball", "tennis ball"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet"),
    "wine glass": ("glass", "wineglass"),
    "cup": ("mug",),
    "sandwich": ("sub", "burger", "hamburger", "panini"),
    "hot dog": ("hotdog",),
    "donut": ("doughnut",),
    "cake": ("cupcake",),
    "chair": ("stool", "armchair"),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant"),
    "dining table": ("table", "desk"),
    "tv": ("television", "monitor", "screen"),
    "laptop": ("computer", "notebook"),
    "remote": ("controller",),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "oven": ("stove",),
    "refrigerator": ("fridge",),
    "hair drier": ("hair dryer", "dryer", "drier"),
}

COLOUR_WORDS: frozenset[str] = frozenset(
    "red green blue yellow orange purple pink brown black white gray grey silver gold golden "
    "beige tan navy maroon teal violet turquoise cyan magenta blond blonde".split()
)
LOCATION_WORDS: frozenset[str] = frozenset(
    "left right top bottom middle center centre front back behind upper lower leftmost rightmost "
    "topmost bottommost uppermost lowermost highest lowest background foreground closest nearest "
    "furthest farthest far near corner edge side".split()
)
ORDINAL_WORDS: frozenset[str] = frozenset(
    "first second third fourth fifth sixth last 1st 2nd 3rd 4th 5th 6th".split()
)
SIZE_WORDS: frozenset[str] = frozenset(
    "big bigger biggest large larger largest small smaller smallest little tiny tiniest tall "
    "taller tallest short shorter shortest huge medium".split()
)
# Words that mean the same for identifying an object; a rephrasing may swap one for the other.
_EQUIVALENT: dict[str, str] = {
    "grey": "gray", "centre": "center", "middle": "center", "nearest": "closest",
    "farthest": "furthest", "blonde": "blond", "large": "big", "largest": "biggest",
    "larger": "bigger", "little": "small", "tiniest": "smallest", "golden": "gold",
}
NUMBER_WORDS: frozenset[str] = frozenset(
    "one two three four five six seven eight nine ten both".split()
)
# Words that are never a head noun.
_STOP: frozenset[str] = frozenset(
    "a an the this that these those his her its their my your our some any all each every "
    "other another only just very most more less half part pic picture image photo frame shot "
    "view scene area thing things stuff object objects shape shapes one ones guy's s is are was "
    "there here it who which what whose where and or but not no yes partially partly barely "
    "whole entire full empty dark light bright pale old young new tiny sized looking".split()
) | COLOUR_WORDS | LOCATION_WORDS | ORDINAL_WORDS | SIZE_WORDS | NUMBER_WORDS
# Words that end the head segment: relations to other things and clauses.
_BOUNDARY: frozenset[str] = frozenset(
    "with in on at of near by next behind beside besides between under over above below from to "
    "into onto against across along around among toward towards than that who which whose "
    "holding wearing sitting standing eating looking walking riding playing carrying facing "
    "lying laying reaching swinging throwing hitting drinking talking using leaning bending "
    "running jumping pointing smiling watching waiting driving parked covered closest nearest "
    "furthest farthest".split()
)
_IRREGULAR_PLURALS: dict[str, str] = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "mice": "mouse",
    "knives": "knife", "geese": "goose", "feet": "foot", "teeth": "tooth", "sheep": "sheep",
    "skis": "skis", "scissors": "scissors", "oxen": "ox", "ladies": "lady", "babies": "baby",
    "buses": "bus", "glasses": "glass", "dresses": "dress", "calves": "calf",
}

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _build_lexicon() -> dict[str, str]:
    lex = {name: name for name in COCO_CATEGORIES}
    for category, words in _SYNONYM_GROUPS.items():
        for w in words:
            lex.setdefault(w, category)
    return lex


LEXICON: dict[str, str] = _build_lexicon()  # known noun (singular, may be two words) -> category


def tokens(text: str) -> list[str]:
    """Lower-cased words of a text (hyphenated words and apostrophes kept whole)."""
    return _WORD.findall(text.lower())


def singular(word: str) -> str:
    """A plain English singular of `word`; leaves words it does not recognise as plural alone."""
    w = word.lower()
    if w in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[w]
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("ves") and w[:-3] + "f" in LEXICON:
        return w[:-3] + "f"
    if len(w) > 3 and w.endswith("es") and re.search(r"(s|x|z|ch|sh)es$", w):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def normalise_word(word: str) -> str:
    """Singular and canonical spelling, for comparing the words of two phrasings."""
    w = singular(word)
    return _EQUIVALENT.get(w, _EQUIVALENT.get(word.lower(), w))


@dataclass(frozen=True)
class Subject:
    """Head noun of an expression. `how`: lexicon | category | rule | none."""

    noun: str | None
    category: str | None
    how: str


def _match_known(words: list[str], i: int, lexicon: dict[str, str]) -> tuple[str, int] | None:
    """The known noun (two words first) starting at word i, with its length in words."""
    if i + 1 < len(words):
        pair = f"{words[i]} {singular(words[i + 1])}"
        if pair in lexicon:
            return pair, 2
    for cand in (words[i], singular(words[i])):
        if cand in lexicon:
            return cand, 1
    return None


def _known_nouns(words: list[str], lexicon: dict[str, str]) -> list[str]:
    """Known nouns in order; a colour word followed by more words is an adjective ("orange shirt")."""
    found, i = [], 0
    while i < len(words):
        hit = _match_known(words, i, lexicon)
        if hit is None:
            i += 1
            continue
        end = i + hit[1]
        if not (hit[0] in COLOUR_WORDS and end < len(words) and words[end] not in _BOUNDARY):
            found.append(hit[0])
        i = end
    return found


def head_segment(words: list[str]) -> list[str]:
    """Words before the first relational word; an expression that starts with one has none."""
    for i, w in enumerate(words):
        if w in _BOUNDARY:
            return words[:i]
    return words


def _lexicon_with(extra: Iterable[str]) -> dict[str, str]:
    extra = [e.lower() for e in extra if e]
    if not extra:
        return LEXICON
    lex = dict(LEXICON)
    for name in extra:
        lex[name] = name
    return lex


def _noun_like(w: str) -> bool:
    return w not in _STOP and w.isalpha() and len(w) > 1 and not w.endswith("ly")


def extract_subject(expression: str, category: str | None = None, extra_nouns: Iterable[str] = ()) -> Subject:
    """The head noun of a referring expression (singular), and the category it names.

    `category` is the category the caller knows (the ref's); `extra_nouns` adds the dataset's own
    category names (RefShapes: circle, square, ...) to the lexicon.
    """
    lexicon = _lexicon_with([*extra_nouns, *([category] if category else [])])
    words = tokens(expression)
    head = head_segment(words)
    known = _known_nouns(head, lexicon)
    if known:
        return Subject(known[-1], lexicon[known[-1]], "lexicon")
    known = _known_nouns(words, lexicon)
    if known:
        return Subject(known[0], lexicon[known[0]], "lexicon")
    if category:
        return Subject(category.lower(), category, "category")
    for w in head or words:
        if _noun_like(w):
            return Subject(singular(w), None, "rule")
    return Subject(None, None, "none")


def head_noun(expression: str, category: str | None = None, extra_nouns: Iterable[str] = ()) -> str | None:
    """Just the noun of `extract_subject` ("sandwich" from "a sandwich on the right")."""
    return extract_subject(expression, category, extra_nouns).noun


def key_words(referring_text: str, category: str | None = None, extra_nouns: Iterable[str] = ()) -> list[str]:
    """Words that identify the object: colour, location, ordinal and size words, and the head noun.

    Returned normalised (`normalise_word`), in order of appearance, without repeats; a rephrasing
    keeps the referent when every one of them is still in its referring part.
    """
    out: list[str] = []
    for w in tokens(referring_text):
        if w in COLOUR_WORDS or w in LOCATION_WORDS or w in ORDINAL_WORDS or w in SIZE_WORDS:
            n = normalise_word(w)
            if n not in out:
                out.append(n)
    noun = head_noun(referring_text, None, [*extra_nouns, *([category] if category else [])])
    if noun:
        for part in noun.split():
            n = normalise_word(part)
            if n not in out:
                out.append(n)
    return out


def missing_words(required: Iterable[str], text: str) -> list[str]:
    """The words of `required` (normalised) that `text` lacks, comparing normalised words."""
    have = {normalise_word(w) for w in tokens(text)}
    return [w for w in required if normalise_word(w) not in have]


def subject_for_ref(data, ref_id: int, sent_index: int = 0) -> Subject:
    """The subject of one sentence of a ref of a `RefCOCO` (stage-1 synthesis: "paint a {noun} on ...").

    The ref's category is the fallback, and every category name of the dataset joins the lexicon.
    """
    ref = data.ref(ref_id)
    sentences = [s.get("sent") or s.get("raw") or "" for s in ref.get("sentences", [])]
    category = data.category(data.ref_ann(ref_id)["category_id"])["name"]
    text = sentences[sent_index] if 0 <= sent_index < len(sentences) else ""
    return extract_subject(text, category, [c["name"] for c in data.categories])
