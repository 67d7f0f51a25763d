"""Count the tokens the served model reads, for the ``usage`` of the OpenAI-compatible embeddings API.

The served tokenizer model (:mod:`embedforge.serving.backends.tokenizer_model`) encodes ``prompt + text`` with the
version's own ``tokenizer.json``, truncated at the trained ``max_seq_length`` counting special tokens.
:class:`TokenCounter` repeats exactly that from the same folder (``<repo>/<name>_tokenizer/<v>/tokenizer/``, or
an export folder), so a request's ``prompt_tokens`` is the number of tokens the embedder ran on: the sum of the
attention masks the ensemble builds. The per-text lengths also steer the API's batching (padding). Without a
tokenizer folder :class:`ApproximateCounter` estimates four characters per token (OpenAI's rule of thumb); the
prompt and the truncation are then unknown, so the estimate can be off either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from embedforge.errors import InputError

#: ``input_type`` -> the keys of ``config_sentence_transformers.json``'s ``prompts`` it uses (first present wins),
#: as the served tokenizer model chooses them.
PROMPT_KEYS = {"query": ("query",), "document": ("document", "passage"), "passage": ("document", "passage")}
DEFAULT_MAX_LENGTH = 512


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError(f"{path} is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def tokenizer_folder(repository: str | Path, model_name: str, version: str) -> Path:
    """Where the repository keeps ``version``'s tokenizer files (see :mod:`embedforge.serving.repository`)."""
    from embedforge.serving.repository import TOKENIZER_DIR, ModelNames

    return Path(repository) / ModelNames.of(model_name).tokenizer / str(version) / TOKENIZER_DIR


class TokenCounter:
    """Token counts as the served tokenizer model computes them, from a tokenizer folder.

    Args:
        folder: Holds ``tokenizer.json`` and, optionally, ``config_sentence_transformers.json`` (prompts),
            ``sentence_bert_config.json`` (``max_seq_length``) and ``tokenizer_config.json``.

    Raises:
        InputError: No ``tokenizer.json`` in ``folder``, or one the ``tokenizers`` library cannot read.
    """

    exact = True

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise InputError(f"{self.folder} has no tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions for bad files
            raise InputError(f"{path} cannot be read by the tokenizers library: {exc}") from None
        prompts = _read_json(self.folder / "config_sentence_transformers.json").get("prompts") or {}
        self.prompts = {kind: next((prompts[k] for k in keys if prompts.get(k)), "")
                        for kind, keys in PROMPT_KEYS.items()}
        max_len = _read_json(self.folder / "sentence_bert_config.json").get("max_seq_length")
        if not max_len:
            max_len = _read_json(self.folder / "tokenizer_config.json").get("model_max_length") or DEFAULT_MAX_LENGTH
        self.max_length = int(max_len)
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()

    def lengths(self, texts: Sequence[str], input_type: str = "query") -> list[int]:
        """Tokens of ``prompt + text`` for each text, special tokens included, cut at ``max_length``."""
        prompt = self.prompts.get(input_type, "")
        return [len(e.ids) for e in self.tokenizer.encode_batch([prompt + t for t in texts])]

    def count(self, texts: Sequence[str], input_type: str = "query") -> int:
        """:meth:`lengths` summed."""
        return sum(self.lengths(texts, input_type))


class ApproximateCounter:
    """An estimate where no tokenizer folder is available: ceil(characters / 4) per text, capped at
    ``max_length`` (None: uncapped)."""

    exact = False

    def __init__(self, max_length: int | None = None):
        self.max_length = max_length

    def lengths(self, texts: Sequence[str], input_type: str = "query") -> list[int]:
        cap = self.max_length or math.inf
        return [int(min(cap, max(1, math.ceil(len(t) / 4)))) for t in texts]

    def count(self, texts: Sequence[str], input_type: str = "query") -> int:
        return sum(self.lengths(texts, input_type))
