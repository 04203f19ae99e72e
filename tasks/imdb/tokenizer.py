"""A byte-level BPE tokenizer trained on the IMDB training text, saved as a Hugging Face tokenizer folder."""
from __future__ import annotations

from pathlib import Path

from learner.models.tokenizer import EOS


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tok.padding_side = "left"  # generation batches are left-padded
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    return tok
