"""The torch-free tokenizer gives open_clip's exact token ids."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from simx.run.tokenizer import DEFAULT_CONTEXT_LENGTH, VOCAB_SHA256, ClipTokenizer, get_tokenizer, tokenize

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
    from simx.core.errors import SimxError

    with pytest.raises(SimxError, match="not found"):
        ClipTokenizer(tmp_path / "nope.txt.gz")
    with pytest.raises(SimxError, match="not str"):
        tokenize(["ok", 3])  # type: ignore[list-item]


def test_tokenizer_never_imports_torch():
    code = "import sys, simx.run.tokenizer as t; t.tokenize('a cat'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- Hugging Face tokenizers
# Real vocabularies cannot be downloaded here (no hub); tiny_tokenizers trains small ones of
# each kind open_clip uses, and open_clip's own HFTokenizer (transformers) is the reference.
HF_KINDS = ("siglip-t5", "siglip2-gemma", "bert-strip-sep", "xlm-roberta")
HF_TEXTS = TRICKY + [
    "A Photo, of a CAT!", "snake_case_words", "a photo of a " + "very " * 80 + "long caption",
    "UPPER lower MiXeD", "",
]


@pytest.fixture(scope="module", params=HF_KINDS)
def hf_pair(request, tmp_path_factory):
    """(simx tokenizer loaded from its saved tokenizer.json, open_clip's HFTokenizer, kind)."""
    pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer as OpenClipHF
    from tiny_tokenizers import KINDS

    from simx.export.text import simx_hf_tokenizer
    from simx.run.hf_tokenizer import HFTokenizer

    build, cfg = KINDS[request.param]
    folder = build(tmp_path_factory.mktemp(request.param))
    ref = OpenClipHF(str(folder), context_length=cfg["context_length"], **cfg["tokenizer_kwargs"])
    exported = simx_hf_tokenizer(ref, request.param)
    path = folder / "simx.tokenizer.json"
    path.write_text(exported.json, encoding="utf-8")
    ours = HFTokenizer.from_file(path, exported.settings, exported.vocab_sha256)
    return ours, ref, request.param


def test_hf_tokenizer_matches_open_clip(hf_pair):
    ours, ref, kind = hf_pair
    texts = HF_TEXTS + _random_texts(300, seed=1)
    got, want = ours(texts), ref(texts).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(texts), ours.context_length)
    bad = [texts[i] for i in range(len(texts)) if not np.array_equal(got[i], want[i])]
    assert not bad, f"{kind}: ids differ from open_clip for {bad[:3]!r}"
    # Another context length (the cut row keeps its eos / sep where the vocabulary adds one).
    np.testing.assert_array_equal(ours(texts, 8), ref(texts, 8).numpy())
    assert len(set(map(tuple, got.tolist()))) > len(texts) // 2  # not a constant output


def test_hf_tokenizer_settings_are_open_clips(hf_pair):
    ours, ref, kind = hf_pair
    s = ours.settings
    assert s.context_length == ref.context_length
    assert s.clean == {"siglip-t5": "canonicalize", "siglip2-gemma": "canonicalize"}.get(kind, "whitespace")
    assert s.strip_sep_token is (kind == "bert-strip-sep")
    assert s.pad_token_id == ref.tokenizer.pad_token_id
    if kind == "bert-strip-sep":  # [SEP] zeroed, as open_clip does for these configs
        ids = ours(["a photo of a cat"])[0]
        assert ref.tokenizer.sep_token_id not in ids.tolist() and ids[0] == ref.tokenizer.cls_token_id


def test_hf_tokenizer_check_refuses_a_wrong_setting(hf_pair):
    from dataclasses import replace

    from simx.export.text import TextExportError, check_tokenizer
    from simx.run.hf_tokenizer import HFTokenizer

    ours, ref, kind = hf_pair
    check_tokenizer(ours, ref, kind)  # the real settings pass
    wrong = "whitespace" if ours.settings.clean == "canonicalize" else "canonicalize"
    bad = HFTokenizer(ours.json, replace(ours.settings, clean=wrong))
    with pytest.raises(TextExportError, match="other token ids"):
        check_tokenizer(bad, ref, kind)


def test_hf_tokenizer_file_errors(tmp_path):
    from simx.core.errors import ModelFileError
    from simx.run.hf_tokenizer import HFTokenizer, HFTokenizerSettings
    from tiny_tokenizers import t5_like

    folder = t5_like(tmp_path / "t5")
    s = HFTokenizerSettings(source="t", context_length=16, clean="canonicalize", pad_token_id=1,
                            pad_token="</s>")
    with pytest.raises(ModelFileError, match="cannot be read"):
        HFTokenizer.from_file(tmp_path / "absent.json", s)
    with pytest.raises(ModelFileError, match="sha256"):
        HFTokenizer.from_file(folder / "tokenizer.json", s, sha256="0" * 64)
    from simx.core.errors import SimxError
    with pytest.raises(SimxError, match="unknown text clean"):
        HFTokenizerSettings(source="t", context_length=16, clean="shout")
    with pytest.raises(SimxError, match="unknown keys"):
        HFTokenizerSettings.from_dict({**s.to_dict(), "lowercase": True})


def test_hf_tokenizer_absent_says_so(monkeypatch):
    """Hub unreachable and not in the local cache: one clear error naming --tokenizer."""
    pytest.importorskip("transformers")
    from simx.export import weights
    from simx.export.text import TextExportError, open_clip_hf_tokenizer

    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    cfg = {"hf_tokenizer_name": "simx-test/no-such-tokenizer", "context_length": 64,
           "tokenizer_kwargs": {"clean": "canonicalize"}}
    with pytest.raises(TextExportError, match="not in the local Hugging Face cache.*--tokenizer"):
        open_clip_hf_tokenizer("openclip-x", cfg)


def test_hf_tokenizer_runs_without_torch_or_transformers(hf_pair, tmp_path):
    """The runtime side needs only `tokenizers`: same ids in a fresh interpreter."""
    import json

    ours, ref, kind = hf_pair
    (tmp_path / "t.json").write_text(ours.json, encoding="utf-8")
    (tmp_path / "s.json").write_text(json.dumps(ours.settings.to_dict()))
    texts = HF_TEXTS[:8]
    code = (
        "import sys, json, numpy as np\n"
        "from simx.run.hf_tokenizer import HFTokenizer, HFTokenizerSettings\n"
        f"d = {str(tmp_path)!r}\n"
        "s = HFTokenizerSettings.from_dict(json.load(open(d + '/s.json')))\n"
        "t = HFTokenizer.from_file(d + '/t.json', s)\n"
        f"np.save(d + '/ids.npy', t({texts!r}))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ref(texts).numpy())
