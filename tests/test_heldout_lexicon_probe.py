"""benchmarks/heldout_lexicon_probe.py: every held-out concept is probed against
the same concepts of training, and the score is the nearest training concept."""
import pytest

from benchmarks.heldout_lexicon_probe import SentenceEmbedder, kinds, probe


def test_every_kind_probes_the_same_concepts_on_both_sides():
    for kind, (train, held) in kinds().items():
        assert set(held) == set(train), kind
        assert all(held[c] for c in held) and all(train[c] for c in train), kind


@pytest.fixture(scope="module")
def embed():
    return SentenceEmbedder()


def test_probe_finds_its_own_words_and_counts_misses(embed):
    train = {"dog": ["a dog barks", "a puppy yaps"], "bell": ["a bell rings"], "rain": ["rain falls"]}
    # the training wordings themselves: each is nearest its own concept
    assert probe(embed, train, train)[:2] == (4, 4)
    # the same words filed under the wrong concepts: every one a miss, named
    wrong = {"dog": ["a bell rings"], "bell": ["rain falls"], "rain": ["a dog barks"]}
    hits, total, misses = probe(embed, train, wrong)
    assert (hits, total) == (0, 3)
    assert ("a bell rings", "dog", "bell") in misses
