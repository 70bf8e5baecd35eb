"""CLIP's BPE tokenizer from a model's ``vocab.json`` + ``merges.txt``, built with ``tokenizers``.

The same pipeline as transformers' CLIPTokenizerFast: NFC, whitespace runs to one space, lower
case; CLIP's regex split; byte-level BPE with ``</w>`` word ends. A prompt becomes BOS + up to 75
tokens + EOS, padded to 77 (with EOS, or with what ``special_tokens_map.json`` names: SDXL's second
tokenizer pads with ``!``, id 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from localllm.errors import InvalidModelFile

CONTEXT = 77
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        if not vocab_path.exists() or not merges_path.exists():
            raise InvalidModelFile(f"{folder} needs vocab.json and merges.txt for CLIP's tokenizer")
        vocab, merges = models.BPE.read_file(str(vocab_path), str(merges_path))
        self.bos = vocab["<|startoftext|>"]
        self.eos = vocab["<|endoftext|>"]
        self.pad = self.eos
        special = folder / "special_tokens_map.json"
        if special.exists():
            pad = json.loads(special.read_text()).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if isinstance(pad, str) and pad in vocab:
                self.pad = vocab[pad]
        bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                         fuse_unk=False, unk_token="<|endoftext|>")
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        self._tok = tok

    def tokens(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> np.ndarray:
        """(1, 77) int64 ids: BOS, the prompt's first 75 tokens, EOS, padding."""
        ids = [self.bos, *self.tokens(text)[: CONTEXT - 2], self.eos]
        ids += [self.pad] * (CONTEXT - len(ids))
        return np.array([ids], dtype=np.int64)
