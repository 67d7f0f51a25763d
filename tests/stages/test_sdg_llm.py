"""LLM SDG generator (issue #3): machinery against REAL local HTTP endpoints.

The fault endpoint (tests/support/llm_servers.py:FaultServer) is a real OpenAI-compatible HTTP server on 127.0.0.1 that
answers every stage with valid structured JSON built from the prompt, and injects 429/Retry-After, 500, slow
replies, malformed bodies and invalid JSON on demand. The generator talks to it through the real OpenAI SDK,
the real store (fsynced JSONL) and the real dedup model. tests/stages/test_sdg_llm_real.py runs a real LLM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_servers import FaultServer

from embedforge.config import LlmSdgConfig, SdgConfig, load_config
from embedforge.contracts import Chunk, read_chunks, write_jsonl
from embedforge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MEMBER_META = {"answer", "query_type", "reasoning_type", "question_complexity", "segment_ids", "hop_count",
               "hop_contexts", "quality_score", "judge", "provenance"}


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def few_chunks(chunks_dir) -> list[Chunk]:
    """Train chunks of 3 real documents (the conftest ingest of the sample corpus), at most 3 chunks each."""
    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train"]
    docs = sorted({c.doc_id for c in chunks})[:3]
    return [c for c in chunks if c.doc_id in docs and c.position < 3]


def make_cfg(srv: FaultServer, work: Path, base_model: str, **llm) -> SdgConfig:
    settings = {
        "base_url": srv.base_url, "model": "fault-model", "work_dir": str(work), "dedup_model": base_model,
        "num_pairs": 3, "query_type_counts": {"multi_hop": 1, "structural": 1, "contextual": 1},
        "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_concurrency": 4, "max_failed_fraction": 1.0,
    }
    settings.update(llm)
    return SdgConfig(generator="llm", llm=settings)


def gen_for(cfg: SdgConfig):
    from embedforge.stages.sdg import make_generator

    return make_generator(cfg)


def results(work: Path, split: str = "train") -> list[dict]:
    p = work / split / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


def failures(work: Path, split: str = "train") -> list[dict]:
    p = work / split / "failures.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.is_file() else []


# ------------------------------------------------------------------------------------------------ config
def test_config_counts_must_sum_and_parse_from_cli():
    cfg = load_config(overrides=["sdg.generator=llm", "sdg.llm.num_pairs=2", "sdg.llm.query_type_counts=multi_hop:1,contextual:1"])
    assert cfg.sdg.llm.query_type_counts == {"multi_hop": 1, "contextual": 1}
    with pytest.raises(ConfigError, match="sum to sdg.llm.num_pairs=2"):
        load_config(overrides=["sdg.llm.num_pairs=2"])
    with pytest.raises(ConfigError, match="query_type_counts"):
        load_config(overrides=["sdg.llm.query_type_counts=bogus:7"])
    with pytest.raises(ConfigError, match="local_model"):
        load_config(overrides=["sdg.llm.backend=local"])
    d = LlmSdgConfig().model_dump()
    assert d["api_key_env"] == "NVIDIA_API_KEY" and d["fallback_api_key_env"] == "OPENAI_API_KEY"
    assert d["query_type_counts"] == {"multi_hop": 3, "structural": 2, "contextual": 2} and d["num_pairs"] == 7
    assert d["judge_threshold"] == 7.0 and d["dedup_threshold"] == 0.9 and d["min_complexity"] == 2


# ---------------------------------------------------------------------------------------- parse/schemas
def test_tolerant_json_parse():
    from embedforge.stages.sdg.llm.schemas import JsonNotFound, extract_json

    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure!\n```json\n{"a": [1, 2,],}\n```\nDone.') == {"a": [1, 2]}
    assert extract_json("<think>the {braces} here</think> Here: {\"a\": 2} thanks") == {"a": 2}
    assert extract_json('[{"question": "q"}]') == [{"question": "q"}]
    with pytest.raises(JsonNotFound):
        extract_json("no json at all")
    with pytest.raises(JsonNotFound):
        extract_json('{"pairs": [{"question": "cut off')


def test_qa_schema_validates_against_the_prompt_and_unions_hops():
    from pydantic import ValidationError

    from embedforge.stages.sdg.llm.schemas import QAResponse, json_schema

    ctx = {"n_segments": 3, "query_types": ["multi_hop", "structural"], "reasoning_types": ["factual", "causal"]}
    good = {"pairs": [{"question": "How do A and B relate?", "answer": "Via C.", "query_type": "Multi-Hop",
                       "reasoning_type": "causal", "question_complexity": 4, "segment_ids": [1],
                       "hop_count": 2, "hop_contexts": [{"hop_number": 1, "segment_ids": [1], "summary": "a"},
                                                        {"hop_number": 2, "segment_ids": [3, 3], "summary": "b"}]}]}
    pair = QAResponse.model_validate(good, context=ctx).pairs[0].normalised(max_hops=3)
    assert pair.query_type == "multi_hop" and pair.segment_ids == [1, 3] and pair.hop_count == 2
    bad = json.loads(json.dumps(good))
    bad["pairs"][0]["hop_contexts"][1]["segment_ids"] = [7]
    with pytest.raises(ValidationError, match=r"segments are numbered 1\.\.3"):
        QAResponse.model_validate(bad, context=ctx)
    bad = json.loads(json.dumps(good))
    bad["pairs"][0]["reasoning_type"] = "astrological"
    with pytest.raises(ValidationError, match="reasoning_type"):
        QAResponse.model_validate(bad, context=ctx)
    schema = json_schema(QAResponse, ctx)
    item = schema["properties"]["pairs"]["items"]
    assert item["properties"]["query_type"]["enum"] == ["multi_hop", "structural"]
    assert item["properties"]["segment_ids"]["items"]["maximum"] == 3
    assert "$ref" not in json.dumps(schema)


# ------------------------------------------------------------------------------------------- end to end
def test_end_to_end_pairs_have_the_schema(few_chunks, base_model, tmp_path):
    with FaultServer() as srv:
        gen = gen_for(make_cfg(srv, tmp_path, base_model))
        pairs = gen.generate(few_chunks, "train")
    by_id = {c.chunk_id: c for c in few_chunks}
    docs = sorted({c.doc_id for c in few_chunks})
    assert pairs and {p.split for p in pairs} == {"train"}
    assert {p.meta["provenance"]["doc_ids"][0] for p in pairs} == set(docs)  # every document produced pairs
    for p in pairs:
        assert set(p.meta) == MEMBER_META and p.relevance == "chunk" and p.source == "llm:fault-model"
        m = p.meta
        assert set(m["judge"]) == {"relevance", "accuracy", "context_support", "clarity", "overall"}
        assert m["quality_score"] == m["judge"]["overall"] >= 7.0
        assert 1 <= m["hop_count"] == len(m["hop_contexts"]) <= 3
        assert m["segment_ids"] == sorted({s for h in m["hop_contexts"] for s in h["segment_ids"]})
        assert [h["hop_number"] for h in m["hop_contexts"]] == list(range(1, m["hop_count"] + 1))
        assert m["provenance"]["chunk_ids"] == p.positive_chunk_ids and m["provenance"]["doc_ids"] == p.positive_doc_ids
        assert m["provenance"]["generator_model"] == "fault-model" and m["provenance"]["prompt_version"] == "v1"
        assert all(by_id[c].doc_id in p.positive_doc_ids for c in p.positive_chunk_ids)
        assert len(p.positive_chunk_ids) == len(m["segment_ids"])  # every listed segment is a positive
    multi = [p for p in pairs if p.meta["query_type"] == "multi_hop"]
    per_doc = {d: sum(c.doc_id == d for c in few_chunks) for d in docs}
    assert multi and all(len(p.positive_chunk_ids) == min(2, per_doc[p.positive_doc_ids[0]]) for p in multi)
    assert any(len(p.positive_chunk_ids) == 2 for p in multi)  # chunks of both hops are positives
    # one fsynced record per document; usage per stage in stats and summary.json
    recs = results(tmp_path)
    assert sorted(r["doc_ids"][0] for r in recs) == docs and all(r["status"] == "ok" for r in recs)
    st = gen.stats()
    for stage in ("artifacts", "qa", "judge"):
        assert st[f"llm.{stage}.requests"] > 0 and st[f"llm.{stage}.prompt_tokens"] > 0
        assert st[f"llm.{stage}.completion_tokens"] > 0
    assert st["llm.artifacts.requests"] == st["llm.qa.requests"] == 3
    assert st["llm.units_completed"] == 3 and st["llm.pairs_kept"] == len(pairs)
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["llm.qa.prompt_tokens"] == st["llm.qa.prompt_tokens"]


def test_judge_threshold_and_dedup_drop_pairs(few_chunks, base_model, tmp_path):
    docs = few_chunks[:3]
    with FaultServer(judge_score=5.0) as srv:
        gen = gen_for(make_cfg(srv, tmp_path / "a", base_model))
        assert gen.generate(docs, "train") == []
        assert gen.stats()["llm.dropped.judge"] > 0
        # the threshold applies at assembly: lowering it re-uses the stored judgements, no new request
        before = len(srv.log)
        gen = gen_for(make_cfg(srv, tmp_path / "a", base_model, judge_threshold=4.0))
        assert len(gen.generate(docs, "train")) > 0 and len(srv.log) == before
    with FaultServer() as srv:  # near-identical questions (same segment quoted) are removed by semantic dedup
        gen = gen_for(make_cfg(srv, tmp_path / "b", base_model, dedup_threshold=0.5))
        gen.generate(few_chunks, "train")
        assert gen.stats()["llm.dropped.duplicate"] > 0


def test_dedup_encodes_through_onnx_runtime_on_a_cpu_with_the_same_result(few_chunks, base_model, tmp_path, caplog):
    """``sdg.llm.encode`` reaches the de-duplication: with the ONNX encoder the bundling and dedup embeddings come
    from ONNX Runtime on a graph kept in the cache folder, and the pairs kept are exactly PyTorch's."""
    import logging

    caplog.set_level(logging.DEBUG, logger="embedforge.retrieval")
    kept = {}
    for encoder in ("torch", "onnx"):
        with FaultServer() as srv:
            cfg = make_cfg(srv, tmp_path / encoder, base_model, dedup_threshold=0.5,
                           encode={"encoder": encoder, "cache_dir": str(tmp_path / "cache")})
            gen = gen_for(cfg)
            kept[encoder] = sorted(p.query for p in gen.generate(few_chunks, "train"))
            assert gen.stats()["llm.dropped.duplicate"] > 0
    assert kept["onnx"] == kept["torch"] and kept["onnx"]
    assert any("with ONNX Runtime" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "cache").rglob("*.onnx")), "the graph is kept for the next stage"


# ------------------------------------------------------------------------------------------ robustness
def test_retries_429_retry_after_500_timeout_malformed(few_chunks, base_model, tmp_path):
    one_doc = [c for c in few_chunks if c.doc_id == few_chunks[0].doc_id]
    script = ["429", "500", "slow", "malformed_http"]
    # The timeout leaves seconds of slack either side: on a loaded 2-core CI machine a healthy reply can take longer
    # than a second, and that must not count as a second timeout.
    with FaultServer(script=script, retry_after=1.0, slow_s=7.0) as srv:
        cfg = make_cfg(srv, tmp_path, base_model, max_concurrency=1,
                       artifacts={"timeout_s": 3.0}, qa={"timeout_s": 30}, judge={"timeout_s": 30})
        gen = gen_for(cfg)
        pairs = gen.generate(one_doc, "train")
        log = list(srv.log)
    assert pairs, "the run must complete despite the faults"
    st = gen.stats()
    assert st["llm.artifacts.rate_limited"] == 1 and st["llm.artifacts.server_errors"] == 1
    assert st["llm.artifacts.timeouts"] == 1 and st["llm.artifacts.bad_responses"] == 1
    assert st["llm.artifacts.retries"] == 4 and st["llm.artifacts.requests"] == 5
    assert st["llm.units_failed"] == 0 and failures(tmp_path) == []
    # Retry-After honoured: the request after the 429 arrived at least 1 s later
    assert [e["behaviour"] for e in log[:5]] == script + ["ok"]
    assert log[1]["t"] - log[0]["t"] >= 1.0


def test_exhausted_retries_are_accounted_failures_and_resume_retries_them(few_chunks, base_model, tmp_path):
    from embedforge.stages.sdg.llm import LlmSdgError

    with FaultServer(stage_faults={"qa": "500"}) as srv:
        cfg = make_cfg(srv, tmp_path, base_model, max_retries=2)
        gen = gen_for(cfg)
        assert gen.generate(few_chunks, "train") == []
        st = gen.stats()
        assert st["llm.qa.requests"] == 3 * 3 and st["llm.qa.failures"] == 3 and st["llm.units_failed"] == 3
        fails = failures(tmp_path)
        assert len(fails) == 3 and {f["stage"] for f in fails} == {"qa"} and {f["kind"] for f in fails} == {"server_error"}
        assert results(tmp_path) == []
        with pytest.raises(LlmSdgError, match="3 of 3 documents/bundles failed"):
            gen_for(make_cfg(srv, tmp_path, base_model, max_retries=0, max_failed_fraction=0.5)).generate(few_chunks, "train")
        srv.stage_faults.clear()  # endpoint healthy again: a rerun retries only the failed documents
        gen = gen_for(make_cfg(srv, tmp_path, base_model))
        assert gen.generate(few_chunks, "train")
        assert len(results(tmp_path)) == 3 and gen.stats()["llm.units_attempted"] == 3


def test_invalid_json_is_repaired_once_then_recorded_never_silently_dropped(few_chunks, base_model, tmp_path):
    one_doc = [c for c in few_chunks if c.doc_id == few_chunks[0].doc_id]
    with FaultServer(script=["bad_json"]) as srv:  # the first reply is prose: one repair request fixes it
        gen = gen_for(make_cfg(srv, tmp_path / "a", base_model, max_concurrency=1))
        assert gen.generate(one_doc, "train")
        assert gen.stats()["llm.artifacts.repairs"] == 1 and gen.stats()["llm.artifacts.invalid_outputs"] == 0
    with FaultServer(stage_faults={"qa": "bad_schema"}) as srv:  # always invalid: the document is a failure
        gen = gen_for(make_cfg(srv, tmp_path / "b", base_model))
        assert gen.generate(one_doc, "train") == []
        st = gen.stats()
        assert st["llm.qa.requests"] == 2 and st["llm.qa.repairs"] == 1 and st["llm.qa.invalid_outputs"] == 1
        (fail,) = failures(tmp_path / "b")
        assert fail["stage"] == "qa" and fail["kind"] == "invalid_output" and '"unexpected"' in fail["raw_excerpt"]
        assert fail["doc_ids"] == [one_doc[0].doc_id]
    with FaultServer(stage_faults={"judge": "bad_json"}) as srv:  # a judge that never answers usably
        gen = gen_for(make_cfg(srv, tmp_path / "c", base_model))
        assert gen.generate(one_doc, "train") == []
        st = gen.stats()
        assert st["llm.dropped.judge_invalid"] == st["llm.judge.invalid_outputs"] > 0
        (rec,) = results(tmp_path / "c")
        assert {d["reason"] for d in rec["dropped"]} >= {"judge_invalid"}


def test_structured_output_falls_back_when_json_schema_is_refused(few_chunks, base_model, tmp_path):
    one_doc = [c for c in few_chunks if c.doc_id == few_chunks[0].doc_id]
    with FaultServer(stage_faults={"*": "reject_schema"}) as srv:
        gen = gen_for(make_cfg(srv, tmp_path, base_model, max_concurrency=1))
        assert gen.generate(one_doc, "train")
        formats = [e["response_format"] for e in srv.log]
    assert formats[0] == "json_schema" and set(formats[1:]) == {"json_object"}  # remembered after one refusal
    assert gen.stats()["llm.artifacts.format_fallbacks"] == 1


def test_request_budget_stops_the_run_and_a_rerun_continues(few_chunks, base_model, tmp_path):
    with FaultServer() as srv:
        gen = gen_for(make_cfg(srv, tmp_path, base_model, request_budget=4, max_concurrency=1))
        gen.generate(few_chunks, "train")
        st = gen.stats()
        assert st["llm.requests"] == 4 and len(srv.log) == 4 and st["llm.budget_exhausted"] == 1
        assert st["llm.units_completed"] < 3 and st["llm.units_skipped"] + st["llm.units_failed"] >= 1
        assert any(f["kind"] == "budget_exhausted" for f in failures(tmp_path))
        gen = gen_for(make_cfg(srv, tmp_path, base_model))
        gen.generate(few_chunks, "train")
        assert len(results(tmp_path)) == 3 and gen.stats()["llm.units_resumed"] == st["llm.units_completed"]


def test_fatal_auth_error_stops_at_once_and_key_never_leaks(few_chunks, base_model, tmp_path, monkeypatch, caplog):
    secret = "nvapi-TEST-SECRET-0123456789"
    monkeypatch.setenv("EF_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FaultServer(require_key=secret) as srv:
        cfg = make_cfg(srv, tmp_path / "ok", base_model, api_key_env="EF_TEST_KEY")
        gen = gen_for(cfg)
        assert gen.generate(few_chunks[:2], "train")
        assert srv.auth_headers == {f"Bearer {secret}"}  # the key reached the endpoint ...
        monkeypatch.setenv("EF_TEST_KEY", "wrong-key")
        with pytest.raises(ConfigError, match="refused the credentials"):
            gen_for(make_cfg(srv, tmp_path / "bad", base_model, api_key_env="EF_TEST_KEY")).generate(few_chunks, "train")
        assert len(srv.requests(behaviour="401")) <= 4  # no retries of a 401; the run stopped
    # ... and nowhere else: logs, config dumps, stats, work files
    assert secret not in caplog.text
    assert secret not in cfg.model_dump_json() and secret not in json.dumps(gen.stats())
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret not in f.read_text(errors="ignore"), f


# --------------------------------------------------------------------------------------------- resume
def test_resume_modes_and_state_checks(few_chunks, base_model, tmp_path):
    with FaultServer() as srv:
        first = gen_for(make_cfg(srv, tmp_path, base_model)).generate(few_chunks, "train")
        n = len(srv.log)
        again = gen_for(make_cfg(srv, tmp_path, base_model, resume="always", max_concurrency=2)).generate(few_chunks, "train")
        assert len(srv.log) == n, "a resumed run of finished documents sends no request"
        assert [p.model_dump() for p in again] == [p.model_dump() for p in first]
        changed = dict(num_pairs=2, query_type_counts={"multi_hop": 1, "structural": 1})
        with pytest.raises(ConfigError, match="resume=always.*num_pairs"):
            gen_for(make_cfg(srv, tmp_path, base_model, resume="always", **changed)).generate(few_chunks, "train")
        gen_for(make_cfg(srv, tmp_path, base_model, resume="if_possible", **changed)).generate(few_chunks, "train")
        assert len(srv.log) > n and list(tmp_path.glob("train.stale-*"))
        n = len(srv.log)
        gen_for(make_cfg(srv, tmp_path, base_model, resume="never", **changed)).generate(few_chunks, "train")
        assert srv.requests(stage="artifacts")[-3:] and len(srv.log) > n and len(results(tmp_path)) == 3


def test_torn_last_line_is_cut_and_redone(few_chunks, base_model, tmp_path):
    with FaultServer() as srv:
        gen_for(make_cfg(srv, tmp_path, base_model)).generate(few_chunks, "train")
        path = tmp_path / "train" / "results.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # a half-written record
        n = len(srv.log)
        gen = gen_for(make_cfg(srv, tmp_path, base_model, resume="always"))
        gen.generate(few_chunks, "train")
        assert gen.stats()["llm.units_resumed"] == 2 and gen.stats()["llm.units_completed"] == 1
        assert srv.requests()[n:] and len(results(tmp_path)) == 3


def test_kill9_mid_run_then_resume_loses_and_duplicates_nothing(chunks_dir, base_model, tmp_path):
    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train" and c.position < 2]
    docs = sorted({c.doc_id for c in chunks})[:8]
    chunks = [c for c in chunks if c.doc_id in docs]
    write_jsonl(tmp_path / "chunks.jsonl", chunks)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    small = dict(max_concurrency=2, num_pairs=2, query_type_counts={"multi_hop": 1, "structural": 1})
    with FaultServer(delay_s=0.25) as srv:
        ref_pairs = gen_for(make_cfg(srv, tmp_path / "ref", base_model, **small)).generate(chunks, "train")  # uninterrupted
        # a separate process, SIGKILLed once a few documents are recorded
        work = tmp_path / "killed"
        cfg = make_cfg(srv, work, base_model, **small)
        (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "llm_servers.py"), "generate", str(tmp_path / "cfg.json"),
                                 str(tmp_path / "chunks.jsonl"), "train", str(tmp_path / "k.json")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        res = work / "train" / "results.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if res.is_file() and res.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = res.read_bytes().count(b"\n")
        assert 2 <= killed_at < len(docs)
        gen = gen_for(cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"resume": "always"})}))
        pairs = gen.generate(chunks, "train")
    recs = [json.loads(line) for line in res.read_text().splitlines()]  # every line is a whole record
    ids = [r["unit_id"] for r in recs]
    assert len(ids) == len(set(ids)), "a document was recorded twice"
    ref_recs = results(tmp_path / "ref")
    assert sorted(d for r in recs for d in r["doc_ids"]) == sorted(d for r in ref_recs for d in r["doc_ids"]) == docs
    assert gen.stats()["llm.units_resumed"] >= killed_at
    assert gen.stats()["llm.units_resumed"] + gen.stats()["llm.units_completed"] == len(docs)
    assert sorted(p.query for p in pairs) == sorted(p.query for p in ref_pairs)


# ------------------------------------------------------------------------------------- units / bundles
def test_cross_document_bundles_and_max_pairs(chunks_dir, base_model, tmp_path):
    from embedforge.stages.sdg.llm.generate import Embedder, plan_units

    chunks = [c for c in read_chunks(chunks_dir) if c.split == "train" and c.position < 2]
    docs = sorted({c.doc_id for c in chunks})[:5]
    chunks = [c for c in chunks if c.doc_id in docs]
    cfg = LlmSdgConfig(bundle_size=2, max_segments=4, dedup_model=base_model)
    units = plan_units(chunks, cfg, Embedder(base_model), seed=13)
    assert sorted(c for u in units for c in u.chunk_ids) == sorted(c.chunk_id for c in chunks)  # each chunk once
    assert all(1 <= len(u.doc_ids) <= 2 and len(u.chunks) <= 4 for u in units)
    assert sum(len(u.doc_ids) == 2 for u in units) == 2
    assert [u.unit_id for u in plan_units(chunks, cfg, Embedder(base_model), seed=13)] == [u.unit_id for u in units]
    with FaultServer() as srv:
        gen = gen_for(make_cfg(srv, tmp_path / "b", base_model, bundle_size=2, max_segments=4))
        pairs = gen.generate(chunks, "train")
        assert any(len(p.positive_doc_ids) == 2 for p in pairs), "a multi-hop pair spans two documents"
        assert all(len(p.meta["provenance"]["unit_doc_ids"]) <= 2 for p in pairs)
        gen = gen_for(make_cfg(srv, tmp_path / "m", base_model, max_concurrency=1))
        assert len(gen.generate(chunks, "train", max_pairs=2)) >= 2
        assert gen.stats()["llm.units_done"] < len(docs)  # stopped starting documents once enough pairs were kept


def test_sdg_stage_runs_the_llm_generator(chunks_dir, base_model, tmp_path):
    """embedforge.stages.sdg.run with generator=llm: pairs.jsonl + usage counters in the manifest."""
    from embedforge.contracts import read_manifest, read_pairs
    from embedforge.stages import sdg

    with FaultServer() as srv:
        cfg = SdgConfig(generator="llm", llm={
            "base_url": srv.base_url, "model": "fault-model", "work_dir": str(tmp_path / "work"), "max_units": 2,
            "num_pairs": 2, "query_type_counts": {"multi_hop": 1, "contextual": 1}, "max_failed_fraction": 1.0})
        sdg.run(chunks_dir, tmp_path / "pairs", cfg, base_model=base_model)
    pairs = read_pairs(tmp_path / "pairs")
    m = read_manifest(tmp_path / "pairs")
    assert pairs and {p.split for p in pairs} == {"train", "eval"}
    assert all(p.source == "llm:fault-model" for p in pairs)
    assert m.counts["gen_llm_qa_prompt_tokens"] > 0 and m.counts["gen_llm_judge_requests"] > 0
    assert (tmp_path / "work" / "train" / "results.jsonl").is_file() and (tmp_path / "work" / "eval" / "results.jsonl").is_file()


def test_cli_sdg_subcommand_with_llm_overrides(chunks_dir, tmp_path):
    """`embedforge sdg --set sdg.generator=llm --set sdg.llm....` against a local OpenAI-compatible endpoint."""
    from typer.testing import CliRunner

    from embedforge.cli import app
    from embedforge.contracts import read_pairs

    with FaultServer() as srv:
        res = CliRunner().invoke(app, [
            "sdg", "--chunks", str(chunks_dir), "--out", str(tmp_path / "pairs"),
            "--set", "sdg.generator=llm", "--set", f"sdg.llm.base_url={srv.base_url}",
            "--set", "sdg.llm.model=fault-model", "--set", f"sdg.llm.work_dir={tmp_path / 'work'}",
            "--set", "sdg.llm.num_pairs=2", "--set", "sdg.llm.query_type_counts=multi_hop:1,structural:1",
            "--set", "sdg.llm.max_units=1",
        ])
    assert res.exit_code == 0, res.output
    pairs = read_pairs(tmp_path / "pairs")
    assert pairs and all(p.source == "llm:fault-model" and p.meta["provenance"]["prompt_version"] == "v1" for p in pairs)


# ------------------------------------------------------------------------------------------- pre-flight
_CONNECTS: list[tuple] = []
_RECORDING: list[bool] = [False]


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect" and _RECORDING[0]:
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside _preflight_connects


def _preflight_connects(llm: dict) -> tuple[str | None, list]:
    """Run the pre-flight on ``llm``; return (its ConfigError message or None, the addresses it connected to)."""
    from embedforge.stages.sdg.llm.preflight import preflight

    _CONNECTS.clear()
    _RECORDING[0] = True
    try:
        preflight(LlmSdgConfig(**llm))
        return None, list(_CONNECTS)
    except ConfigError as exc:
        return str(exc), list(_CONNECTS)
    finally:
        _RECORDING[0] = False


@pytest.fixture
def no_keys(monkeypatch):
    for name in ("NVIDIA_API_KEY", "OPENAI_API_KEY", "EF_TEST_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_preflight_without_a_key_never_contacts_the_remote_default(no_keys):
    msg, connects = _preflight_connects({})
    assert connects == []
    assert msg.startswith("no API key for sdg.llm.base_url https://integrate.api.nvidia.com/v1: set $NVIDIA_API_KEY")
    assert "sdg.llm.api_key_env" in msg and "self-hosted" in msg


def test_preflight_refused_port_is_named_with_the_setting(no_keys):
    from llm_servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    msg, connects = _preflight_connects({"base_url": url})
    assert msg == f"sdg.llm.base_url {url} refused the connection: start the server or fix sdg.llm.base_url"
    assert len(connects) == 1  # no retries
    msg, _ = _preflight_connects({"base_url": url.replace("127.0.0.1", "me:s3cr3t@127.0.0.1")})
    assert msg.endswith("refused the connection: start the server or fix sdg.llm.base_url") and "s3cr3t" not in msg


def test_preflight_unknown_model_names_the_setting_and_what_is_served(no_keys):
    with FaultServer() as srv:
        assert _preflight_connects({"base_url": srv.base_url, "model": "fault-model"}) == (None, [("127.0.0.1", srv.port)])
        msg, _ = _preflight_connects({"base_url": srv.base_url, "model": "no-such-model"})
        assert msg == (f"sdg.llm.model 'no-such-model' is not served by sdg.llm.base_url {srv.base_url} "
                       "(it serves: fault-model): fix sdg.llm.model")
        msg, _ = _preflight_connects({"base_url": srv.base_url, "model": "fault-model", "judge": {"model": "big-judge"}})
        assert msg.startswith("sdg.llm.judge.model 'big-judge' is not served") and msg.endswith("fix sdg.llm.judge.model")
        assert srv.log == []  # a listed model costs no chat request


def test_preflight_rejected_or_missing_key_on_a_keyed_endpoint(no_keys):
    secret = "nvapi-TEST-SECRET-0123456789"
    with FaultServer(require_key=secret) as srv:
        no_keys.setenv("EF_TEST_KEY", "wrong-key")
        msg, _ = _preflight_connects({"base_url": srv.base_url, "model": "fault-model", "api_key_env": "EF_TEST_KEY"})
        assert msg.startswith(f"sdg.llm.base_url {srv.base_url} refused the key in $EF_TEST_KEY: fix it")
        assert "401" in msg and "wrong-key" not in msg
        no_keys.delenv("EF_TEST_KEY")
        msg, _ = _preflight_connects({"base_url": srv.base_url, "model": "fault-model", "api_key_env": "EF_TEST_KEY"})
        assert msg.startswith(f"sdg.llm.base_url {srv.base_url} needs a key: set $EF_TEST_KEY")
        no_keys.setenv("EF_TEST_KEY", secret)
        assert _preflight_connects({"base_url": srv.base_url, "model": "fault-model", "api_key_env": "EF_TEST_KEY"})[0] is None


def test_sdg_stage_runs_the_preflight_before_any_document(no_keys, chunks_dir, base_model, tmp_path):
    from embedforge.stages import sdg

    with FaultServer() as srv:
        cfg = SdgConfig(generator="llm", llm={"base_url": srv.base_url, "model": "gone-model",
                                              "work_dir": str(tmp_path / "work")})
        with pytest.raises(ConfigError, match="sdg.llm.model 'gone-model' is not served"):
            sdg.run(chunks_dir, tmp_path / "pairs", cfg, base_model=base_model)
        assert srv.log == [] and not (tmp_path / "work").exists()
