"""Edit kind and changed words, as Prompt-to-Prompt needs them."""

from __future__ import annotations

from editgen.p2p.edit_diff import OTHER, REFINE, REPLACE, diff_captions, normalized, similarity, words


def test_replace_when_word_counts_match() -> None:
    d = diff_captions("a cat on a sofa", "a dog on a sofa")
    assert (d.kind, d.changed_words, d.source_words, d.target_words) == (REPLACE, ["dog"], ["cat"], ["dog"])
    d = diff_captions("Red Dress, Size M", "blue dress - size M")
    assert d.kind == REPLACE and d.source_words == ["red"] and d.target_words == ["blue"]


def test_refine_when_input_is_a_subsequence() -> None:
    d = diff_captions("a cat on a sofa", "a fluffy cat on a sofa in the snow")
    assert d.kind == REFINE
    assert d.changed_words == ["fluffy", "in", "the", "snow"]
    assert d.source_words == [] and d.target_words == []


def test_other() -> None:
    d = diff_captions("cup of coffee with cookies", "cup of coffee")
    assert d.kind == OTHER and d.changed_words == []
    d = diff_captions("a cat on a sofa", "an orange dog sleeping on a sofa")
    assert d.kind == OTHER and "dog" in d.changed_words


def test_words_and_similarity() -> None:
    assert words("Women's T-Shirt, Size: XL!") == ["women's", "t-shirt", "size", "xl"]
    assert normalized("A Cat, on a Sofa!") == normalized("a cat on a sofa")
    assert similarity("a cat on a sofa", "a cat on a sofa") == 1.0
    assert similarity("a cat on a sofa", "totally different words here") < 0.2
    assert 0.75 < similarity("a cat on a sofa", "a dog on a sofa") < 0.85
