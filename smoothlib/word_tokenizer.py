"""A ``CLIPTokenizer`` over a small fixed vocabulary, built in memory (no file, no network).

Every lower-case letter, digit and punctuation mark is a token, and each given word
becomes one token through BPE merges: known words cost one token and unknown ones
still encode. The toy world's tokenizer is one (its caption words), and so are the
tiny test models' (:mod:`smoothlib.testing`).
"""
from __future__ import annotations

import string


def word_tokenizer(words=(), max_length: int = 16):
    """A ``CLIPTokenizer`` built in memory: every lower-case letter, digit and
    punctuation mark, plus each word in ``words`` as one token (through BPE
    merges), so that known words cost one token and unknown ones still encode.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _word_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _word_vocab(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and BPE merges of :func:`word_tokenizer`."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab: dict[str, int] = {}
    for tok in specials + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:
        w = w.lower()
        left = w[0]
        for i, c in enumerate(w[1:], start=1):
            right = c + ("</w>" if i == len(w) - 1 else "")
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    return vocab, list(dict.fromkeys(merges))
