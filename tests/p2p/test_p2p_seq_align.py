"""Token alignment, word lookup and control compilation, on the real CLIP tokenizer (no model needed)."""

from __future__ import annotations

import pytest
import torch

from editgen.p2p import seq_align
from editgen.p2p.controls import (
    BlendConfig,
    EditControl,
    compile_edit,
    cross_window_steps,
    ip2p_steps,
    parse_window,
    window_steps,
)
from editgen.p2p.seq_align import (
    decide_mode,
    find_word,
    global_align,
    refine_alignment,
    replace_alignment,
    reweight_vector,
    tokenize,
)
from editgen.tiny.clip_tokenizer import load_clip_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


def test_tokenizer_matches_open_clip(tok):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-L-14")
    for text in ["A photo of a Dog, sitting on a hippopotamus!", "a cat's 3 toys, naïve café", "teddy-bear rides"]:
        ours = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = reference([text])[0].tolist()
        n = ours.index(49407) + 1  # open_clip pads with 0, SD's tokenizer with EOS
        assert ours[:n] == theirs[:n]
        assert len(ours) == 77 and ours[0] == 49406


def test_word_lookup_case_punctuation_multitoken(tok):
    t = tokenize(tok, "A Dog, a teddy-bear and a hippopotamus near a hotdog stand.")
    dog = find_word(t, "dog")
    assert dog == [2]  # BOS at 0, "a" at 1; the comma token (3) is not part of the word
    assert find_word(t, "Dog,") == dog == find_word(t, "DOG")
    assert find_word(t, "teddy-bear") == [5, 7]  # "teddy", "bear" without the hyphen
    assert find_word(t, "bear") == [7]
    assert find_word(t, "teddy bear") == [5, 7]
    hippo = find_word(t, "hippopotamus")
    assert len(hippo) == 3 and hippo == list(range(hippo[0], hippo[0] + 3))
    assert find_word(t, "dog") != find_word(t, "hotdog")
    assert find_word(t, "stand") and not find_word(t, "horse")
    assert find_word(t, 1) == dog  # word index ("A" is word 0)


def test_tokenize_positions_cover_sequence(tok):
    t = tokenize(tok, "a photo of a hippopotamus, on the grass")
    positions = [p for w in t.words for p in w.positions]
    assert positions == list(range(1, t.eos))
    assert t.ids[t.eos] == 49407


def _cols(m: torch.Tensor, k: int) -> list[int]:
    return torch.nonzero(m[k]).flatten().tolist()


def test_replace_equal_token_counts(tok):
    s, e = tokenize(tok, "a photo of a cat on the grass"), tokenize(tok, "a photo of a dog on the grass")
    al = replace_alignment(s, e)
    assert torch.equal(al.mapper, torch.eye(77))  # 1:1 everywhere: cat->dog at the same position
    assert al.identity and bool(al.mapped.all())  # so the processors can skip the matmul
    same = replace_alignment(s, s)
    assert same.identity and bool(same.mapped.all())


@pytest.mark.parametrize("grow", [True, False])
def test_replace_unequal_token_counts_keeps_later_tokens_aligned(tok, grow):
    short = "a photo of a cat on the grass"
    long = "a photo of a hippopotamus on the grass"
    s, e = (tokenize(tok, short), tokenize(tok, long)) if grow else (tokenize(tok, long), tokenize(tok, short))
    al = replace_alignment(s, e)
    m = al.mapper
    ws, we = find_word(s, "cat" if grow else "hippopotamus"), find_word(e, "hippopotamus" if grow else "cat")
    assert (len(ws), len(we)) == ((1, 3) if grow else (3, 1))
    # swapped word: attention spread evenly, mass preserved per source token
    for k in ws:
        assert torch.allclose(m[k, we], torch.full((len(we),), 1.0 / len(we)))
        assert m[k].sum().item() == pytest.approx(1.0)
    # every later word, EOS and padding: source position p maps to p + shift
    shift = len(we) - len(ws)
    for word in ("on", "the", "grass"):
        (ps,), (pe,) = find_word(s, word), find_word(e, word)
        assert pe == ps + shift and _cols(m, ps) == [pe] and m[ps, pe] == 1.0
    assert m[s.eos, e.eos] == 1.0
    for k in range(s.eos, 76 - abs(shift)):
        assert _cols(m, k) == [k + shift]
    # the official mapper's bug would map padding j -> j; make sure nothing maps off-diagonal by shift
    assert m[0, 0] == 1.0
    if grow:  # the last source positions would fall past column 76: they fold into it
        assert all(_cols(m, k) == [76] for k in range(76 - shift, 77))
    else:  # the last source position spreads over the columns nothing else reaches
        assert _cols(m, 76) == [76 + shift, 75, 76] and m[76, 76].item() == pytest.approx(1 / 3)
    assert torch.allclose(m.sum(1), torch.ones(77)) and bool(al.mapped.all())


def test_replace_needs_equal_word_counts(tok):
    with pytest.raises(ValueError, match="same number of words"):
        replace_alignment(tokenize(tok, "a cat"), tokenize(tok, "a fluffy cat"))


def test_refinement_alignment(tok):
    s = tokenize(tok, "a cat on a bench")
    e = tokenize(tok, "a fluffy cat on a wooden bench")
    al = refine_alignment(s, e)
    m = al.mapper
    for word in ("cat", "on", "bench"):
        (ps,), (pe,) = find_word(s, word), find_word(e, word)
        assert _cols(m, ps) == [pe]
    for new in ("fluffy", "wooden"):
        (pe,) = find_word(e, new)
        assert not al.mapped[pe] and m[:, pe].sum() == 0
    assert m[s.eos, e.eos] == 1.0 and m[s.eos + 1, e.eos + 1] == 1.0
    assert al.mapped.sum().item() == 77 - 2
    assert refine_alignment(s, s).identity


def test_global_align():
    assert global_align([1, 2, 3], [1, 9, 2, 3]) == [0, None, 1, 2]
    assert global_align([1, 2, 3], [3]) == [2]
    assert global_align([], [4, 5]) == [None, None]
    assert global_align([5, 6], [7, 8]) == [None, None]  # substitutions never pair


def test_decide_mode():
    assert decide_mode("a cat on a mat", "a dog on a mat") == "replace"
    assert decide_mode("a cat", "a black cat") == "refine"
    assert decide_mode("a cat", "a black cat", edit_kind="ip2p") == "ip2p"
    assert decide_mode("a cat", "a dog", edit_kind="Refinement") == "refine"
    with pytest.raises(ValueError):
        decide_mode("a", "b", edit_kind="teleport")


def test_reweight_vector(tok):
    t = tokenize(tok, "a Fluffy, hippopotamus")
    w = reweight_vector(t, {"fluffy": 2.0, "hippopotamus": 0.5})
    assert w is not None
    assert w[find_word(t, "fluffy")].tolist() == [2.0]
    assert w[find_word(t, "hippopotamus")].tolist() == [0.5] * 3
    assert (w == 1).sum().item() == 77 - 4
    assert reweight_vector(t, {"fluffy": 1.0}) is None
    with pytest.raises(ValueError, match="not found"):
        reweight_vector(t, {"zebra": 2.0})


def test_windows():
    assert parse_window(0.8) == (0.0, 0.8)
    assert parse_window("0.2,0.6") == (0.2, 0.6)
    assert window_steps(0.3, 10) == (0, 3)
    assert window_steps(0.58, 50) == (0, 28)  # int(0.58 * 50) = int(28.999999999999996), as the reference
    assert window_steps((0.1, 0.5), 50) == (5, 25)
    assert cross_window_steps(0.8, 10) == (0, 8) and cross_window_steps(0.5, 10) == (0, 5)
    assert cross_window_steps(0.4, 10) == (0, 4) and window_steps(0.4, 10) == (0, 4)
    assert cross_window_steps(0.5, 9) == (0, 5) != window_steps(0.5, 9)  # (N + 1)-row alpha table
    assert ip2p_steps(0.35, 10) == (0, 4) and ip2p_steps(0.5, 10) == (0, 5)  # p > i / (N - 1)
    for bad in (1.5, (0.6, 0.2), "x"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_compile_edit_windows_and_modes(tok):
    src = tokenize(tok, "a cat on a bench")
    edit = tokenize(tok, "a fluffy cat on a bench")
    ctl = EditControl(edit.prompt, cross_replace={"default_": 0.5, "cat": (0.0, 1.0)}, self_replace=0.25)
    c = compile_edit(ctl, src, edit, 8)
    assert c.mode == "refine"
    (fluffy,), (cat,), (bench,) = find_word(edit, "fluffy"), find_word(edit, "cat"), find_word(edit, "bench")
    assert c.alpha[:, fluffy].sum() == 0  # new word: never from source
    assert c.alpha[:, cat].tolist() == [1.0] * 8  # per-word window
    assert c.alpha[:, bench].tolist() == [1.0] * 4 + [0.0] * 4
    assert c.self_steps == (0, 2) and c.self_max_tokens == 32 * 32

    ip = compile_edit(EditControl(edit.prompt, mode="ip2p", self_replace=0.5), src, edit, 8)
    assert ip.alpha.sum() == 0 and ip.self_steps == (0, 4) and ip.self_max_tokens is None

    rw = compile_edit(EditControl(src.prompt, mode="reweight", reweight={"cat": 3.0}), src, src, 8)
    assert rw.mapper is None and rw.weights is not None and rw.weights[find_word(src, "cat")].item() == 3.0
    with pytest.raises(ValueError):
        compile_edit(EditControl(src.prompt, mode="reweight"), src, src, 8)

    bl = compile_edit(
        EditControl("a dog on a bench", blend=BlendConfig("cat,dog", start=0.5)),
        src,
        tokenize(tok, "a dog on a bench"),
        8,
    )
    assert bl.blend is not None and bl.blend.start_step == 4
    assert bl.blend.src_cols[find_word(src, "cat")].item() == 1.0 and bl.blend.src_cols.sum() == 1
    with pytest.raises(ValueError, match="neither"):
        compile_edit(EditControl("a dog", blend=BlendConfig(["horse"])), src, tokenize(tok, "a dog"), 8)


def test_edit_control_roundtrip():
    ctl = EditControl(
        "a dog", cross_replace=(0.1, 0.7), blend={"words": ["dog"], "threshold": 0.4}, reweight={"dog": 2}
    )
    again = EditControl.from_dict(ctl.to_dict())
    assert again == ctl and again.cross_replace == [0.1, 0.7] and again.blend.threshold == 0.4
    assert EditControl("a b c", edit_kind="add").resolve("a b").mode == "refine"


def test_odd_unicode_and_fallback_index(tok):
    t = tokenize(tok, "a cafe\u0301 with a Dog 🐶 &amp; cat")  # decomposed accent: NFC like the tokenizer
    assert find_word(t, "café") and find_word(t, "dog") and find_word(t, "cat")
    full = list(t.ids)
    words = seq_align._token_words(tok, full, len(full) - 1)  # id-only index used when text disagrees
    assert [p for w in words for p in w.positions] == list(range(1, len(full) - 1))
    fallback = seq_align.PromptTokens(t.prompt, t.ids, words)
    assert find_word(fallback, "dog") == find_word(t, "dog")


def _long(n: int, word: str) -> str:
    """A caption of about ``n`` CLIP tokens with ``word`` third and a closing word after it."""
    return f"a {word} " + " ".join(["on the grass"] * (n // 3)) + " tonight"


@pytest.mark.parametrize("n", [60, 70, 72, 73, 74, 75, 80])
@pytest.mark.parametrize("grow", [True, False])
def test_replace_mapper_near_the_token_limit(tok, n, grow):
    """Rows sum to 1 (attention mass kept) and every edit column is reached, with 1 <-> 3 token swaps
    whose prompts end just before, at and past the 77-token truncation."""
    short, long = tokenize(tok, _long(n, "cat")), tokenize(tok, _long(n, "hippopotamus"))
    s, e = (short, long) if grow else (long, short)
    al = replace_alignment(s, e)
    assert torch.allclose(al.mapper.sum(1), torch.ones(77)), al.mapper.sum(1)
    assert bool((al.mapper.sum(0) > 0).all()) and bool(al.mapped.all())
    if not s.truncated and not e.truncated:
        (ps,), (pe,) = find_word(s, "tonight"), find_word(e, "tonight")
        assert al.mapper[ps, pe] == 1.0  # later words stay aligned


@pytest.mark.parametrize("n", [70, 73, 74, 80])
@pytest.mark.parametrize("add", [True, False])
def test_refine_mapper_near_the_token_limit(tok, n, add):
    """Word added or removed near the limit: tail rows sum to 1, every tail column is reached, only
    new tokens go unmapped and only removed tokens give their attention to nobody."""
    plain, more = tokenize(tok, _long(n, "cat")), tokenize(tok, _long(n, "fluffy cat"))
    s, e = (plain, more) if add else (more, plain)
    al = refine_alignment(s, e)
    rows, cols = al.mapper.sum(1), al.mapper.sum(0)
    assert torch.allclose(rows[s.eos :], torch.ones(77 - s.eos)) and bool((cols[e.eos :] > 0).all())
    assert set(rows[: s.eos].tolist()) <= {0.0, 1.0} and rows[0] == 1.0
    unmapped = [j for j in range(77) if not al.mapped[j]]
    assert unmapped == (find_word(e, "fluffy") if add else [])
    lost = [k for k in range(s.eos) if rows[k] == 0]
    assert lost == ([] if add else find_word(s, "fluffy"))


def test_refinement_tie_break_with_repeated_tokens(tok):
    """Official traceback order (insert, delete, diagonal) on "a cat and a dog" -> "a dog and a cat and
    a dog": the first "a" stays paired, "dog and a" is new, "cat and a dog" aligned at the end."""
    from tests.p2p_reference import needleman_wunsch

    s, e = tokenize(tok, "a cat and a dog"), tokenize(tok, "a dog and a cat and a dog")
    a, b = list(s.ids[1 : s.eos]), list(e.ids[1 : e.eos])
    got = global_align(a, b)
    assert got == [0, None, None, None, 1, 2, 3, 4]
    assert [-1 if i is None else i for i in got] == needleman_wunsch(a, b)
    for x, y in [([1, 2, 1, 2], [2, 1, 2, 1, 2]), ([3, 3, 4], [3, 4, 3, 4, 3]), ([5, 6, 5], [6, 5, 6])]:
        assert [-1 if i is None else i for i in global_align(x, y)] == needleman_wunsch(x, y)


def test_words_past_truncation_are_reported_as_truncated(tok):
    src = tokenize(tok, _long(80, "cat") + " with a red ball")
    edit = tokenize(tok, _long(80, "cat") + " with a blue ball")
    assert src.truncated and seq_align.edit_truncated(src, edit)
    assert not seq_align.edit_truncated(src, tokenize(tok, _long(80, "dog") + " with a blue ball"))
    with pytest.raises(seq_align.TruncatedWord, match="truncation"):
        compile_edit(EditControl(edit.prompt, mode="replace"), src, edit, 4)
    dog = tokenize(tok, _long(80, "dog") + " with a blue ball")
    with pytest.raises(seq_align.TruncatedWord, match=r"blend words \['ball'\] lie past"):
        compile_edit(EditControl(dog.prompt, blend=BlendConfig(["ball"])), src, dog, 4)
    assert compile_edit(EditControl(dog.prompt, blend=BlendConfig(["ball", "dog"])), src, dog, 4).blend
    with pytest.raises(seq_align.TruncatedWord, match="cross_replace word 'ball'"):
        compile_edit(EditControl(src.prompt, mode="reweight", reweight={"cat": 2.0},
                                 cross_replace={"ball": 0.5}), src, src, 4)
    with pytest.raises(seq_align.TruncatedWord, match="reweight word 'ball'"):
        reweight_vector(src, {"ball": 2.0})
    with pytest.raises(ValueError, match="not found"):
        reweight_vector(src, {"zebra": 2.0})


def test_emoji_and_cjk_words_found_by_token(tok):
    t = tokenize(tok, "a dog 🐶! next to 一只猫 and a 🐱")
    dog_emoji, cat_cjk, cat_emoji = (seq_align.locate_word(t, w, "blend") for w in ("🐶", "猫", "🐱"))
    assert len(dog_emoji) == 1 and len(cat_cjk) == 3 and len(cat_emoji) == 1
    assert b"".join(t.token_bytes[p - 1] for p in cat_cjk) == "猫".encode()
    assert t.ids[cat_emoji[0]] != t.ids[dog_emoji[0]]
    with pytest.raises(ValueError, match="not found"):
        seq_align.locate_word(t, "🐭", "blend")
