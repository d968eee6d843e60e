"""The real model families of `tests/fixtures/real_models`, as folders `mmrl model build-tiny --like` takes.

Each family's folder is its upstream files unchanged, with two assemblies the fixtures need:
- Qwen3-VL Thinking: only its chat template is published separately; the other files are Qwen3-VL-4B's (the
  Thinking and Instruct models share tokenizer, processor and config).
- Gemma 3: its SentencePiece model is not in the fixtures (too large to obtain). The folder keeps the real config,
  template, processor and tokenizer_config, and gets a stand-in `tokenizer.json`: every token the real
  `tokenizer_config.json` declares (all 6415 added tokens: <bos>, <start_of_turn>, <end_of_turn>, <start_of_image>,
  <image_soft_token>, ...) at its real id, and byte-level pieces for ordinary text in ids the real vocabulary gives
  to ordinary words. Template, special ids and image expansion are Gemma's; how plain words split is not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "real_models"
QWEN3_VL = REAL / "qwen3_vl_instruct" / "Qwen3-VL-4B-Instruct"

# family -> (source folder, chat template replacing the folder's, or None)
SOURCES: dict[str, tuple[Path, Path | None]] = {
    "qwen2_vl": (REAL / "qwen2_vl" / "Qwen2-VL-2B-base_modelscope", REAL / "qwen2_vl" / "Qwen2-VL-2B-Instruct"
                 / "chat_template.json"),
    "qwen2_5_vl": (REAL / "qwen2_5_vl" / "Qwen2.5-VL-3B-Instruct", None),
    "qwen3_vl": (QWEN3_VL, None),
    "qwen3_vl_thinking": (QWEN3_VL, REAL / "qwen3_vl_thinking" / "chat_template.json"),
    "gemma3": (REAL / "gemma3" / "gemma-3-4b-it", None),
    "smolvlm": (REAL / "smolvlm" / "SmolVLM-256M-Instruct", None),
}
FAMILIES = list(SOURCES)
# Families whose architecture the shared-prefix rollout and log-prob paths support (the others fall back).
SHARES_PREFIX = {"qwen2_vl": True, "qwen2_5_vl": True, "qwen3_vl": True, "qwen3_vl_thinking": True,
                 "gemma3": False, "smolvlm": False}


def assemble(family: str, dest: Path) -> Path:
    """The family's model folder (upstream files; see the module docstring for the two assemblies)."""
    source, template = SOURCES[family]
    dest.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and file.suffix in (".json", ".txt", ".jinja", ".model"):
            shutil.copyfile(file, dest / file.name)
    if template is not None:
        # Only the processor's template is replaced: tokenizer_config.json keeps the one it ships with, as a
        # downloaded folder does (the processor's file is the one transformers' AutoProcessor reads).
        shutil.copyfile(template, dest / "chat_template.json")
    if family == "gemma3":
        write_gemma_standin_tokenizer(dest)
    return dest


def write_gemma_standin_tokenizer(folder: Path) -> None:
    """`tokenizer.json` for a Gemma folder without its SentencePiece model (see the module docstring): Gemma's own
    tokenizer class (BPE with byte fallback, spaces as "▁") over the real added tokens at their ids, one piece per
    printable ASCII character, the 256 byte-fallback pieces, and a filler word in each remaining id."""
    from transformers import GemmaTokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    added = {int(i): spec["content"] for i, spec in config["added_tokens_decoder"].items()}
    vocab = {content: i for i, content in added.items()}
    free = (i for i in range(max(added) + 1) if i not in added)
    pieces = ["\u2581", *(chr(c) for c in range(33, 127)), *(f"<0x{b:02X}>" for b in range(256))]
    for piece in pieces:
        if piece not in vocab:
            vocab[piece] = next(free)
    # Every other id decodes to a word of its own, as every id of the real vocabulary does (a sampled id must not
    # decode to nothing); encoding never produces them (no merges).
    vocab.update({f"\u2581w{i}": i for i in free})
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
