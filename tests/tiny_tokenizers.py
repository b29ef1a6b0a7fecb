"""Small Hugging Face tokenizers trained here, shaped like the real ones open_clip loads.

The hub is unreachable in tests, so the real vocabularies (SigLIP's T5 c4-en, SigLIP2's
Gemma, BERT, XLM-R) cannot be downloaded. Each builder trains a few-hundred-token model
of the same kind (Unigram with Metaspace for sentencepiece vocabularies, byte-fallback BPE
for Gemma, WordPiece for BERT) with the same special tokens and post-processor, and saves
``tokenizer.json`` + ``tokenizer_config.json`` as transformers' ``save_pretrained`` would,
so ``AutoTokenizer.from_pretrained(folder)`` (inside open_clip's HFTokenizer) loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

CORPUS = [
    "a photo of a cat", "a photo of a dog sitting on a red sofa next to the window",
    "the quick brown fox jumps over the lazy dog", "an astronaut riding a horse on the moon",
    "crème brûlée à la café", "東京タワーの夜景", "北京 서울", "numbers 1234 and 3.14159",
    "Hello, World! UPPER lower MiXeD", "a diagram of a rocket engine", "emoji 🐶🐱 👍",
]


def _save(tok: Any, folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def t5_like(folder: Path) -> Path:
    """SigLIP's T5 sentencepiece vocabulary: Unigram, "$A </s>", pad = eos = </s> (id 1)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(),
                                           normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS * 5, trainers.UnigramTrainer(
        vocab_size=180, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return _save(tok, folder, {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>",
                               "pad_token": "</s>", "unk_token": "<unk>", "extra_ids": 0})


def gemma_like(folder: Path) -> Path:
    """SigLIP2's Gemma vocabulary: byte-fallback BPE, no bos, eos appended, pad id 0."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=420, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="$A <eos>", pair="$A <eos> $B <eos>", special_tokens=[("<eos>", 1)])
    return _save(tok, folder, {"tokenizer_class": "GemmaTokenizer", "pad_token": "<pad>",
                               "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
                               "add_bos_token": False, "add_eos_token": True,
                               "padding_side": "right"})


def bert_like(folder: Path) -> Path:
    """bert-base-uncased: lower-casing WordPiece, "[CLS] $A [SEP]" (open_clip strips [SEP])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 5, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return _save(tok, folder, {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                               "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                               "sep_token": "[SEP]", "mask_token": "[MASK]"})


def xlmr_like(folder: Path) -> Path:
    """xlm-roberta: sentencepiece Unigram, "<s> $A </s>", pad id 1."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS * 5, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return _save(tok, folder, {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>",
                               "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                               "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"})


# name -> (builder, open_clip text_cfg the real model of that kind uses)
KINDS: dict[str, tuple[Callable[[Path], Path], dict[str, Any]]] = {
    "siglip-t5": (t5_like, {"context_length": 64, "tokenizer_kwargs": {"clean": "canonicalize"}}),
    "siglip2-gemma": (gemma_like, {"context_length": 64, "tokenizer_kwargs": {"clean": "canonicalize"}}),
    "bert-strip-sep": (bert_like, {"context_length": 32, "tokenizer_kwargs": {"strip_sep_token": True}}),
    "xlm-roberta": (xlmr_like, {"context_length": 77, "tokenizer_kwargs": {}}),
}
