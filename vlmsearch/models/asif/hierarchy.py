"""WordNet hypernyms of the ImageNet-1k classes, as extra prototype anchors.

An ImageNet classifier knows "goldfinch" and "ptarmigan" but not "bird". Each hypernym
that covers several classes becomes an anchor whose image side pools the classifier's
probabilities over those classes (``GROUP_POOL``) and whose text side is "a photo of a
{hypernym}" (see ``build.prototype_block``). The table is derived from WordNet 3.0 by
``scripts/build_wordnet_table.py`` and ships as package data with WordNet's licence
(``data/LICENSE-WordNet``).
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

TABLE = "imagenet-wordnet.json.gz"
IMAGENET_CLASSES = 1000

# Chosen by benchmarks/bench_asif_words.py (RESULTS.md, "Everyday words"): hypernyms that
# cover 2..400 of the 1000 classes (above 400 only "organism", "whole", "object" and the
# like remain, which name nothing a user searches for).
MIN_CLASSES = 2
MAX_CLASSES = 400
# A hypernym anchor's image similarity is this times its summed class probability (0.3, 0.5,
# 0.7 and 1.0 measured; 0.5 kept exact class names' R@1 and zero-shot top-1 unchanged).
GROUP_WEIGHT = 0.5
# How a hypernym pools its classes' probabilities: the L2 norm (2), not the sum (1). With
# the sum, a photo the classifier cannot place (probability spread over hundreds of animal
# classes, e.g. the Hubble deep field) scores near 1 for "animal" and tops "an animal";
# the L2 norm stays small for spread-out probabilities and near the sum for confident ones.
# Measured equal or better on every figure but two small ones (RESULTS.md, "Everyday
# words": bundled-photo intrusions 6 vs 5 in 60 top-10s, hand-caption R@5 0.873 vs 0.877).
GROUP_POOL = 2.0


@dataclass(frozen=True)
class Hypernym:
    wnid: str
    lemmas: tuple[str, ...]
    gloss: str
    classes: tuple[int, ...]  # ImageNet-1k class indices below it


@functools.cache
def wordnet_table() -> dict[str, Any]:
    """The packaged table: ``classes`` (1000 WordNet ids in class-index order) and
    ``synsets`` (id -> lemmas, gloss, parents)."""
    ref = resources.files("vlmsearch.models.asif") / "data" / TABLE
    with ref.open("rb") as f, gzip.open(f) as g:
        return json.load(g)


def hypernyms(min_classes: int = MIN_CLASSES, max_classes: int = MAX_CLASSES) -> list[Hypernym]:
    """Synsets above the ImageNet-1k classes that cover ``min_classes..max_classes`` of
    them, in WordNet id order."""
    table = wordnet_table()
    synsets = table["synsets"]
    below: dict[str, set[int]] = {}
    for i, wnid in enumerate(table["classes"]):
        todo, seen = [wnid], set()
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            below.setdefault(s, set()).add(i)
            todo += synsets[s]["parents"]
    return [
        Hypernym(s, tuple(synsets[s]["lemmas"]), synsets[s]["gloss"], tuple(sorted(c)))
        for s, c in sorted(below.items())
        if min_classes <= len(c) <= max_classes
    ]


def hypernym_texts(h: Hypernym, template: str) -> list[str]:
    """The captions whose mean embedding is a hypernym's text side: the template with its
    first lemma name, alone and followed by the gloss's first clause (measured against the
    name alone, the first three synonyms and the gloss alone; RESULTS.md)."""
    name = h.lemmas[0]
    with_gloss = template.replace("{}", "{}, " + h.gloss.replace("{", "(").replace("}", ")"))
    return [template.format(name), with_gloss.format(name)]
