"""The torch-free tokenizer gives open_clip's exact token ids."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from simx.tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    VOCAB_SHA256,
    ClipTokenizer,
    get_tokenizer,
    tokenize,
)

TRICKY = [
    "",
    "a photo of a cat",
    "Crème brûlée à la café — naïve façade",
    "東京タワーの夜景 北京 서울",
    "🐶🐱 emoji 👍🏽 family 👨‍👩‍👧",
    "x " * 200,  # far beyond 77 tokens
    "a" * 300,  # one huge word
    "Hello,   world!!!  ...?? (test) [brackets] {braces} #hash @at $5.99 50% a&b",
    "  \t\n leading and trailing \r\n ",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;q&quot; &#39;s &eacute;",
    "don't I'LL we've they're it's I'm he'd",
    "Ã©tÃ© mojibake that ftfy repairs",
    "numbers 1234567 3.14159 ½ ² Ⅻ ٣ 一二三",
    "ﬁ ligature ＦＵＬＬ width",
    "Zalgo z̷̢a̶l̸g̵o",
    "tab\tsep\u00a0nbsp\u200bzwsp",
    "UPPER lower MiXeD",
    "<start_of_text> literal specials <end_of_text>",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings over letters, marks, digits, CJK, emoji, punctuation and spaces."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "éèêëàâäôöüçñßøåæœ",
        "0123456789",
        "日本語中文한국어",
        "😀🎉🚀❤️👍",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "   \t\n",
        "\u0301\u0308\u200d",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(0, 60)
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def open_clip_tokenize():
    import open_clip
    return lambda texts, n=DEFAULT_CONTEXT_LENGTH: open_clip.tokenize(texts, context_length=n).numpy()


def test_tricky_strings_match_open_clip(open_clip_tokenize):
    got = tokenize(TRICKY)
    ref = open_clip_tokenize(TRICKY)
    assert got.dtype == np.int64 and got.shape == (len(TRICKY), DEFAULT_CONTEXT_LENGTH)
    bad = [TRICKY[i] for i in range(len(TRICKY)) if not np.array_equal(got[i], ref[i])]
    assert not bad, f"token ids differ from open_clip for {bad!r}"


def test_random_strings_match_open_clip(open_clip_tokenize):
    texts = _random_texts(300)
    np.testing.assert_array_equal(tokenize(texts), open_clip_tokenize(texts))


def test_model_tokenizer_and_other_context_length(open_clip_tokenize):
    import open_clip
    tok = open_clip.get_tokenizer("ViT-B-32")
    np.testing.assert_array_equal(tokenize(TRICKY), tok(TRICKY).numpy())
    np.testing.assert_array_equal(get_tokenizer(16)(TRICKY), open_clip_tokenize(TRICKY, 16))


def test_truncation_keeps_eot_last_and_padding_is_zero():
    tk = get_tokenizer()
    long, empty = tk(["x " * 200, ""])
    assert long[0] == tk.sot_token_id and long[-1] == tk.eot_token_id
    assert (long[1:-1] != 0).all()
    assert list(empty[:2]) == [tk.sot_token_id, tk.eot_token_id] and not empty[2:].any()
    # The text tower pools at argmax(id): that must be the eot position.
    assert int(np.argmax(long)) == DEFAULT_CONTEXT_LENGTH - 1


def test_decode_roundtrip_and_vocab_identity():
    tk = get_tokenizer()
    assert tk.vocab_sha256 == VOCAB_SHA256 and tk.vocab_size == 49408
    assert tk.decode(tk.encode("A Photo of a DOG!")).strip() == "a photo of a dog !"


def test_bad_inputs(tmp_path):
    from simx.errors import SimxError

    with pytest.raises(SimxError, match="not found"):
        ClipTokenizer(tmp_path / "nope.txt.gz")
    with pytest.raises(SimxError, match="not str"):
        tokenize(["ok", 3])  # type: ignore[list-item]


def test_tokenizer_never_imports_torch():
    code = "import sys, simx.tokenizer as t; t.tokenize('a cat'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
