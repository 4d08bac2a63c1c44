"""A tiny random-weight chat LLM (Llama + byte-level BPE tokenizer) built offline, for tests and demos.

No model hub is reachable here, so the instruct stage's vLLM and OpenAI-server paths are exercised on a
model made in code: random weights write garbage, but JSON-schema constrained decoding still yields a
schema-valid object, which is exactly what the pipeline must handle. head_dim is 64 because vLLM's CPU
attention kernels need it. Usage: `python -m tiny.llm OUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editgen.pipeline.cache import cache_dir

#: ChatML, the format Qwen2.5 uses too; the tokenizer carries it so `LLM.chat` and the server work.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: Marker file so a cached build is reused only when complete.
DONE_MARK = ".tiny_llm_done"


def _training_corpus() -> list[str]:
    """A few hundred strings resembling what the model will see: captions, prompts and JSON."""
    corpus: list[str] = []
    try:
        from editgen.prompts.builder import load_fewshot, load_system_prompt

        corpus.append(load_system_prompt())
        for ex in load_fewshot():
            corpus.append(ex.caption)
            corpus.append(json.dumps({"instruction": ex.instruction, "edited_caption": ex.edited_caption}))
    except Exception:  # the builder is optional: the tokenizer only needs some text
        pass
    words = (
        "a the of on in with and photo image stock vector illustration red blue green black white "
        "cat dog man woman car house tree sky beach city night winter summer make turn add remove "
        "change replace into it instruction edited caption style painting watercolor sunset"
    ).split()
    for i in range(300):
        corpus.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(4 + i % 9)))
    corpus.append('{"instruction": "make it snow", "edited_caption": "a snowy street"}')
    corpus.append("0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return corpus


def build_tokenizer(
    out_dir: str | Path,
    vocab_size: int = 1024,
    special_tokens: list[str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> None:
    """Train a byte-level BPE on the corpus and save it as a transformers fast tokenizer.

    `special_tokens` beyond ChatML's (a VLM's image placeholders) come after them, so ChatML's ids stay put.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(special_tokens or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = chat_template
    fast.model_max_length = 4096
    fast.save_pretrained(str(out_dir))


def build_tiny_llm(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer + chat template to `out_dir` (idempotent)."""
    out = Path(out_dir)
    if (out / DONE_MARK).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(str(out))
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=bos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": bos_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=1))
    (out / DONE_MARK).write_text("ok\n")
    return out


def default_dir() -> Path:
    """Where tests and demos cache the tiny LLM: `$EDITGEN_CACHE/tiny_llm` (or ~/.cache/editgen)."""
    return cache_dir() / "tiny_llm"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default=None, help="default: $EDITGEN_CACHE/tiny_llm")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    path = build_tiny_llm(args.out_dir or default_dir(), hidden_size=args.hidden_size, num_layers=args.layers)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
