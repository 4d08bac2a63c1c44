"""Offline CLIP tokenizer: HF ``CLIPTokenizer`` files built from the BPE table open_clip ships.

Stable Diffusion's tokenizer (``openai/clip-vit-large-patch14``) is the original CLIP BPE with 49,408
entries. ``open_clip`` vendors exactly that merge table (``bpe_simple_vocab_16e6.txt.gz``), so the real
tokenizer can be reconstructed without a model hub: same vocabulary order, same ids, same 77-token
context. Tests and the tiny models use it so token alignment is exercised on real CLIP tokenization.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77
# CLIP uses the first 48,894 merges of the file (after its header line): 49152 - 256 byte tokens - 2 specials.
N_MERGES = 49152 - 256 - 2


def clip_vocab_and_merges(bpe_path: str | None = None) -> tuple[dict[str, int], list[str]]:
    """Return (token -> id, merge lines) in CLIP's canonical order (ids match OpenAI CLIP)."""
    with gzip.open(bpe_path or default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer(
    out_dir: str | os.PathLike[str],
    pad_token: str = EOS,
    model_max_length: int = CONTEXT_LENGTH,
) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config for ``CLIPTokenizer.from_pretrained``.

    ``pad_token`` is ``<|endoftext|>`` for SD 1.x / SDXL's first tokenizer and ``"!"`` for SDXL's
    second (OpenCLIP bigG) tokenizer. Idempotent: existing complete output is left untouched; new
    output is written to a temporary sibling and renamed into place.
    """
    out = Path(out_dir)
    if _complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        vocab, merges = clip_vocab_and_merges()
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

        from transformers import CLIPTokenizer

        tok = CLIPTokenizer(
            vocab=vocab,
            merges=[tuple(m.split()) for m in merges],
            pad_token=pad_token,
            model_max_length=model_max_length,
        )
        tok.save_pretrained(str(tmp))
        if not _complete(out):
            if out.exists():
                shutil.rmtree(out, ignore_errors=True)
            try:
                os.replace(tmp, out)  # atomic: readers never see a half-written tokenizer
            except OSError:
                if not _complete(out):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _complete(out: Path) -> bool:
    return all((out / name).exists() for name in ("tokenizer_config.json", "vocab.json", "merges.txt"))


def load_clip_tokenizer(cache_dir: str | os.PathLike[str] | None = None, pad_token: str = EOS):
    """Build (if needed) and load the real CLIP tokenizer from ``cache_dir`` (default: editgen cache)."""
    from transformers import CLIPTokenizer

    if cache_dir is None:
        base = os.environ.get("EDITGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "editgen")
        cache_dir = os.path.join(base, "clip-tokenizer" if pad_token == EOS else "clip-tokenizer-pad-bang")
    path = write_clip_tokenizer(cache_dir, pad_token=pad_token)
    return CLIPTokenizer.from_pretrained(str(path))
