"""Triton Python-backend model (copied as ``model.py`` into ``<name>_tokenizer/<version>/``): text -> token ids.

The first step of the ``<name>`` ensemble. It tokenises exactly as sentence-transformers does at training time:
``prompt + text`` with the version's own ``tokenizer.json`` (the fast tokenizer of the trained model), truncated
to the trained ``max_seq_length`` (``sentence_bert_config.json``) counting special tokens, padded to the longest
text of the request. The prompt is chosen by the optional ``input_type`` input: ``query`` (default) uses the
saved ``query`` prompt, ``passage``/``document`` the document prompt (``config_sentence_transformers.json``).
Everything is read from the version folder, so rolling back a version rolls back its tokenizer and prompts too.

Inputs: ``text`` BYTES ``[batch, 1]``, ``input_type`` BYTES ``[batch, 1]`` (optional).
Outputs: ``input_ids``, ``attention_mask`` INT64 ``[batch, sequence]``.
Runs inside the Triton server (needs ``numpy`` and ``tokenizers`` in the Python-backend environment); it is not
imported by embedforge itself.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

PROMPT_KEYS = {"query": ("query",), "passage": ("document", "passage"), "document": ("document", "passage")}


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        st = _read_json(os.path.join(folder, "config_sentence_transformers.json"))
        self.prompts = {k: v for k, v in (st.get("prompts") or {}).items() if v}
        max_len = _read_json(os.path.join(folder, "sentence_bert_config.json")).get("max_seq_length")
        if not max_len:
            max_len = _read_json(os.path.join(folder, "tokenizer_config.json")).get("model_max_length") or 512
        self.max_length = int(max_len)
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad = _read_json(os.path.join(folder, "tokenizer_config.json")).get("pad_token") or "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(pad)
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)

    def _prompt(self, input_type):
        keys = PROMPT_KEYS.get(input_type)
        if keys is None:
            raise ValueError(f"input_type {input_type!r}: use query or document (passage, NIM's name, is the same)")
        return next((self.prompts[k] for k in keys if k in self.prompts), "")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
                         for t in pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)]
                kind = pb_utils.get_input_tensor_by_name(request, "input_type")
                kinds = ([k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in kind.as_numpy().reshape(-1)]
                         if kind is not None else ["query"] * len(texts))
                if len(kinds) == 1:
                    kinds = kinds * len(texts)
                encoded = self.tokenizer.encode_batch([self._prompt(k) + t for k, t in zip(kinds, texts)])
                ids = np.array([e.ids for e in encoded], dtype=np.int64)
                mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]))
            except Exception as exc:  # one bad request must not fail the others of the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
