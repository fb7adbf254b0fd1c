"""Deterministic English texts of mixed lengths, for parity checks and throughput measurements."""

from __future__ import annotations

import random

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A job queue lets the API answer at once while workers do the slow part.",
    "Rain fell on the old stone bridge all through the night.",
    "She tuned the violin twice before the concert began.",
    "Embeddings map sentences to vectors so that similar meanings land close together.",
    "The museum opens at nine, but the café next door opens at seven.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "He forgot his umbrella again, and of course it started to pour.",
    "Interest rates rose for the third quarter in a row, cooling the housing market.",
    "The recipe calls for two cups of flour, a pinch of salt and one egg.",
    "Our team shipped the release on Friday and spent Monday fixing the one bug we missed.",
    "Glaciers carve U-shaped valleys as they slowly grind down the mountains.",
    "Why does the cat always sit on the keyboard when I am busy?",
    "The treaty was signed in 1648 after thirty years of war.",
    "Batching inputs of similar length wastes less compute on padding tokens.",
    "Children played football in the square until the streetlights came on.",
    "A prime number has exactly two divisors: one and itself.",
    "The hikers reached the summit just as the fog lifted.",
    "Please restart the worker after changing the model directory.",
    "Jazz grew out of blues, ragtime and the brass bands of New Orleans.",
    "The library's oldest manuscript is written on vellum in faded brown ink.",
    "Tokenizers split rare words into several sub-word pieces.",
    "Coffee prices jumped after a frost damaged crops in Brazil.",
    "The spacecraft sent back images of a moon covered in ice.",
    "Our neighbour's dog barks at every delivery van, without exception.",
    "Versioned APIs let old clients keep working while new ones get features.",
    "Lighthouses once guided ships with nothing more than a flame and a lens.",
    "The committee postponed the vote until more data was available.",
    "Bread rises because yeast produces carbon dioxide as it feeds on sugar.",
    "In winter the lake freezes so thick that people drive across it.",
    "Is it possible to learn a new language in six months?",
    "The violinist's bow snapped in the middle of the second movement.",
]

_SHORT = ["hello", "ok", "vector search", "cats", "", "Paris in spring", "why?", "GPU vs CPU"]


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    """Return ``count`` texts: about 30% short, 55% a few sentences, 15% long enough to pass 256 tokens."""
    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            texts.append(rng.choice(_SHORT + SENTENCES[:8]))
        elif kind < 0.85:
            texts.append(" ".join(rng.choices(SENTENCES, k=rng.randint(2, 8))))
        else:
            texts.append(" ".join(rng.choices(SENTENCES, k=rng.randint(20, 40))))
    return texts
