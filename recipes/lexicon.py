"""The fixed knowledge the tiny models memorise: a table of invented facts and a set of invented couplets.

Both are constants of the recipe (not of the split seed): every checkpoint trained from this recipe
knows the same table, and the held-out split asks about it with phrasings never paired with that item
in training (see ``tasks.py``).
"""
from __future__ import annotations

import random

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "h", "k", "kr", "l", "m", "n", "p", "pr", "qu", "r",
           "s", "sh", "st", "t", "th", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "oo")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "x")

N_FACTS = 40
"""Rows in the fact table."""


def _invented_name(rng: random.Random) -> str:
    """A pronounceable capitalised name of 2-3 syllables, e.g. 'Drasomir'."""
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.choice((2, 2, 3)))]
    return "".join(parts).capitalize()


def _build_facts(n: int, seed: int = 7) -> tuple[tuple[str, str], ...]:
    """n (country, capital) pairs of invented names, all 2n names distinct."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n:
        country, capital = _invented_name(rng), _invented_name(rng)
        if country in seen or capital in seen or country == capital:
            continue
        seen.update((country, capital))
        rows.append((country, capital))
    return tuple(rows)


FACTS: tuple[tuple[str, str], ...] = _build_facts(N_FACTS)
"""(key, value) = (invented country, its invented capital); keys and values are all distinct."""

COUPLETS: tuple[tuple[str, str], ...] = (
    ("the amber fox runs through the mill", "and silver rain falls on the hill"),
    ("a quiet lamp glows in the hall", "while paper moths dance on the wall"),
    ("the river sings of distant stone", "and carries songs it has not known"),
    ("seven crows sit upon the gate", "they watch the farmer working late"),
    ("the baker hums a morning tune", "beneath the pale and fading moon"),
    ("a copper bell rings in the bay", "to call the fishing boats away"),
    ("the garden sleeps beneath the snow", "and dreams of roses long ago"),
    ("old maps are folded in a chest", "with letters from the distant west"),
    ("the lantern keeper climbs the stair", "and lights the beacon in the air"),
    ("a velvet cat walks on the roof", "and leaves no mark and gives no proof"),
    ("the winter wind forgets its name", "and whistles softly all the same"),
    ("green apples tumble from the tree", "and roll toward the sleeping sea"),
    ("the clockmaker counts every gear", "and listens for the turning year"),
    ("a paper kite escapes the string", "and rides the clouds of early spring"),
    ("the harbor lights begin to fade", "as sailors sing the songs they made"),
    ("the potter shapes a bowl of clay", "and sets it in the sun to stay"),
    ("a silent owl surveys the field", "where golden wheat is soon to yield"),
    ("the tailor stitches threads of blue", "for coats that shine like morning dew"),
    ("the mountain wears a cap of cloud", "and speaks to thunder long and loud"),
    ("a tiny boat of walnut shell", "goes sailing round the wishing well"),
    ("the candle leans toward the door", "and spills its wax upon the floor"),
    ("the orchard gate is painted red", "where sleepy bees return to bed"),
    ("a lonely star above the dune", "keeps watch until the early noon"),
    ("the miller counts his sacks of grain", "and hurries home before the rain"),
)
"""(first line, second line) of each invented couplet; every line is unique."""
