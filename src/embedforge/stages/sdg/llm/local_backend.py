"""In-process backend: a Hugging Face causal LM run with transformers (GPU when present), for users with a GPU
and no endpoint. Same prompts, same tolerant parsing and repair as the HTTP backend.

There is no grammar-constrained decoding here: the prompts carry the JSON shape and, when a JSON reply is
expected, the reply is pre-filled with ``{`` so the model starts an object. Generation runs in a worker thread
(one at a time: a single model instance is not re-entrant); ``timeout_s`` becomes transformers' ``max_time``.

``model`` may be a model folder, a hub id (needs the HF cache when offline) or the path of a ``.gguf`` file
(loaded and de-quantised by transformers through ``gguf_file=``; needs the ``gguf`` package).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.errors import ConfigError
from embedforge.stages.sdg.llm.backends import Completion, RequestFailed, StageSettings

if TYPE_CHECKING:
    from embedforge.stages.sdg.llm.prompts import Message

log = logging.getLogger(__name__)


def split_gguf(model: str, gguf_file: str = "") -> tuple[str, str]:
    """``(folder or hub id, gguf file name or "")``; a path ending in .gguf is split into folder + file."""
    p = Path(model).expanduser()
    if not gguf_file and p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"sdg.llm.local_model {model!r}: GGUF file not found")
        return str(p.parent), p.name
    return model, gguf_file


class LocalBackend:
    """transformers ``AutoModelForCausalLM`` behind the :class:`~embedforge.stages.sdg.llm.backends.Backend` protocol.

    Args:
        model: Model folder, hub id, or ``.gguf`` path.
        gguf_file: GGUF file name inside ``model`` (transformers ``gguf_file=``).
        device: ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N``.
    """

    name = "local"
    modes = ("json_object", "none")  # "json_object": pre-fill "{"; never sends a schema

    def __init__(self, model: str, gguf_file: str = "", device: str = "auto"):
        self.model_id, self.gguf_file = split_gguf(model, gguf_file)
        self.device = device
        self.model_label = self.gguf_file or Path(self.model_id).name  # recorded as generator_model
        self._lock = threading.Lock()
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from embedforge.retrieval.encode import pick_device

        device = pick_device(self.device)
        kw: dict[str, Any] = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        log.info("loading local LLM %s%s on %s", self.model_id, f" ({self.gguf_file})" if self.gguf_file else "", device)
        try:
            self._tok = AutoTokenizer.from_pretrained(self.model_id, **kw)
            dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
            self._model = AutoModelForCausalLM.from_pretrained(self.model_id, dtype=dtype, **kw).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load sdg.llm.local_model {self.model_id!r}: {exc}") from None
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token
        if not getattr(self._tok, "chat_template", None):
            raise ConfigError(f"sdg.llm.local_model {self.model_id!r} has no chat template; use an instruct model")

    def _generate(self, messages: list[Message], settings: StageSettings, prefill: str) -> Completion:
        import torch

        with self._lock:
            self._load()
            prompt = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefill
            enc = self._tok(prompt, return_tensors="pt", add_special_tokens=False).to(self._model.device)
            n_in = int(enc["input_ids"].shape[1])
            sample = settings.temperature > 0
            gen_kw: dict[str, Any] = dict(
                max_new_tokens=settings.max_tokens, do_sample=sample, max_time=settings.timeout_s,
                pad_token_id=self._tok.pad_token_id,
            )
            if sample:
                gen_kw.update(temperature=settings.temperature, top_p=settings.top_p)
            try:
                with torch.inference_mode():
                    out = self._model.generate(**enc, **gen_kw)
            except RuntimeError as exc:  # e.g. CUDA out of memory: a failure of this document
                raise RequestFailed(f"local generation failed: {exc}", kind="local_error") from exc
            new = out[0][n_in:]
            text = prefill + self._tok.decode(new, skip_special_tokens=True)
            eos = self._tok.eos_token_id
            finished = len(new) > 0 and eos is not None and int(new[-1]) == eos
            return Completion(
                text=text, finish_reason="stop" if finished or len(new) < settings.max_tokens else "length",
                prompt_tokens=n_in, completion_tokens=len(new),
            )

    async def chat(self, messages: list[Message], settings: StageSettings, response_format: dict | None) -> Completion:
        prefill = "{" if response_format is not None else ""
        return await asyncio.to_thread(self._generate, messages, settings, prefill)

    async def close(self) -> None:
        return None
