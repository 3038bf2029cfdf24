"""Answer normalisation shared by the VQA, POPE and report metrics.

`normalize` lowercases, turns "n't" into " not", replaces every punctuation character with a
space, drops the articles a/an/the and collapses whitespace. Everything after works on the
resulting word tokens, so a match is always on word boundaries: "no" never matches "normal",
"nodule" or "unknown".

Yes/no polarity (`polarity`), in this order:
1. the first word decides when it is a bare yes/no word ("yes, there is" -> yes; "no" -> no);
2. otherwise any negation word anywhere ("there is no effusion", "not seen", "absent") -> no;
3. otherwise any affirmative word or phrase ("present", "positive", "there is", "visible") -> yes;
4. otherwise the answer is unparseable (None), and the caller counts it as wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PUNCT = re.compile(r"[^\w\s]|_")
_NOT = re.compile(r"n't\b")
_ARTICLES = frozenset({"a", "an", "the"})

_YES_FIRST = frozenset({"yes", "yeah", "yep", "yup", "true", "correct", "affirmative"})
_NO_FIRST = frozenset({"no", "nope", "false", "incorrect"})
_NEGATION = frozenset(
    {"no", "not", "none", "nope", "absent", "negative", "without", "never", "neither", "nor"}
    | {"false", "incorrect"}
)
_AFFIRMATIVE: tuple[tuple[str, ...], ...] = (
    ("present",),
    ("positive",),
    ("seen",),
    ("visible",),
    ("evident",),
    ("identified",),
    ("there", "is"),
    ("there", "are"),
)
# Normalised references that mark a question as a yes/no question.
YES_NO_REFERENCES = {
    "yes": True,
    "present": True,
    "positive": True,
    "true": True,
    "no": False,
    "absent": False,
    "negative": False,
    "false": False,
}


def tokens(text: str | None) -> list[str]:
    """Normalised word tokens of `text` (None reads as empty)."""
    if not text:
        return []
    text = _NOT.sub(" not", text.lower())
    return [w for w in _PUNCT.sub(" ", text).split() if w not in _ARTICLES]


def normalize(text: str | None) -> str:
    return " ".join(tokens(text))


def contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    """Whether the token sequence `phrase` occurs in `words` (whole tokens only)."""
    return bool(phrase_positions(words, phrase))


def phrase_positions(words: Sequence[str], phrase: Sequence[str]) -> list[int]:
    n = len(phrase)
    if n == 0:
        return []
    return [i for i in range(len(words) - n + 1) if tuple(words[i : i + n]) == tuple(phrase)]


def polarity(text: str | None) -> bool | None:
    """True for yes, False for no, None when the answer states neither (see module docstring)."""
    words = tokens(text)
    if not words:
        return None
    if words[0] in _YES_FIRST:
        return True
    if words[0] in _NO_FIRST:
        return False
    if any(w in _NEGATION for w in words):
        return False
    if any(contains(words, phrase) for phrase in _AFFIRMATIVE):
        return True
    return None


def reference_polarity(reference: str | None) -> bool | None:
    """Polarity of a reference answer that is a bare yes/no form, else None (not a yes/no item)."""
    return YES_NO_REFERENCES.get(normalize(reference))


def match_choice(prediction: str | None, choices: Sequence[str]) -> str | None:
    """The single candidate a free-text prediction names, or None (no candidate, or several).

    An exact (normalised) match wins; otherwise the candidates found inside the prediction as whole
    phrases, dropping any found only as part of a longer found candidate ("lung" in "left lung").
    """
    words = tokens(prediction)
    if not words:
        return None
    options = {c: tokens(c) for c in choices}
    for choice, phrase in options.items():
        if phrase == words:
            return choice
    found = [c for c, phrase in options.items() if phrase and contains(words, phrase)]
    found = [
        c
        for c in found
        if not any(
            len(options[d]) > len(options[c]) and contains(options[d], options[c]) for d in found
        )
    ]
    distinct = {tuple(options[c]) for c in found}
    return found[0] if len(distinct) == 1 else None
