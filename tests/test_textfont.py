"""Pictures draw every token as text: a font that has it, or a readable escape; never an empty box."""

import warnings

import pytest

pytest.importorskip("matplotlib")
from nanogpt import textfont  # noqa: E402


def test_every_drawn_character_is_in_the_chosen_font():
    labels = ["the", "é", "日本", "語", "🤖", " ", "\\n"]
    drawn, family = textfont.readable(labels)
    path = dict(textfont._fonts())[family] if family in dict(textfont._fonts()) else textfont._fonts()[0][1]
    covered = textfont._charmap(path)
    assert all(ord(c) in covered or c.isspace() for text in drawn for c in text)
    assert drawn[0] == "the" and drawn[1] == "é"  # what the font has stays as it is
    if drawn[2] != "日本":  # no CJK font installed here: the escape is readable and exact
        assert drawn[2] == "\\u65e5\\u672c"


def test_attention_picture_of_japanese_tokens_warns_of_no_missing_glyph(tmp_path):
    import torch

    from nanogpt.attention_maps import plot_attention

    T = 4
    maps = {0: torch.tril(torch.ones(2, T, T)) / torch.arange(1, T + 1).view(1, T, 1)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = plot_attention(maps, ["吾", "輩", "は", "猫"], tmp_path / "a.png", title="吾輩は猫である")
    assert out.is_file() and out.stat().st_size > 1000
    assert not [w for w in caught if "missing from" in str(w.message) or "Glyph" in str(w.message)]
