"""Versioned prompt templates of the four-stage LLM SDG recipe.

A prompt set is immutable once released: change wording by adding a new version (``"v2"``) and selecting it
with ``sdg.llm.prompt_version``. The version is recorded in every pair's provenance and is part of the resume
fingerprint, so results of different prompt versions are never mixed in one run.

Every user prompt spells out the JSON shape it expects, so endpoints without schema-constrained decoding (and
the local transformers backend) get the same instructions as those with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedforge.errors import ConfigError
from embedforge.stages.sdg.llm.schemas import ARTIFACT_TYPES

if TYPE_CHECKING:
    from embedforge.contracts import Chunk

Message = dict[str, str]

ARTIFACT_DESCRIPTIONS: dict[str, str] = {
    "key_concepts": "central ideas the text explains",
    "relationships": "how two concepts or entities relate (e.g. 'X requires Y')",
    "themes": "overarching topics",
    "entities": "named things: systems, functions, people, organisations, standards, products",
    "processes": "procedures, workflows, sequences of steps",
    "insights": "non-obvious conclusions or implications",
    "technical_terms": "domain vocabulary with a precise meaning",
    "contextual_factors": "conditions, constraints, assumptions or scope that qualify statements",
}

QUERY_TYPE_DESCRIPTIONS: dict[str, str] = {
    "multi_hop": "needs facts from 2-3 different segments combined; describe each hop in hop_contexts",
    "structural": "about how the content is organised: definitions, parts, lists, steps, rules and their exceptions",
    "contextual": "depends on conditions, scope, purpose or circumstances stated in the text",
    "factual": "a single fact stated in one segment",
}


@dataclass(frozen=True)
class PromptSet:
    """One released version of the prompts; ``render_*`` methods return chat messages."""

    version: str
    system: str
    artifacts: str
    qa: str
    judge: str
    repair: str

    def artifacts_messages(self, segments: str, max_items: int) -> list[Message]:
        types = "\n".join(f"- {t}: {ARTIFACT_DESCRIPTIONS[t]}" for t in ARTIFACT_TYPES)
        shape = json.dumps({t: [{"name": "...", "description": "..."}] for t in ARTIFACT_TYPES[:2]})[:-1] + ", ...}"
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.artifacts.format(n=max_items, types=types, shape=shape, segments=segments)},
        ]

    def qa_messages(
        self,
        segments: str,
        artifacts_json: str,
        counts: dict[str, int],
        reasoning_types: list[str],
        min_complexity: int,
        max_hops: int,
        n_segments: int = 2,
    ) -> list[Message]:
        mix = "\n".join(
            f"- {t}: exactly {n} — {QUERY_TYPE_DESCRIPTIONS[t]}" for t, n in counts.items() if n > 0
        )
        hops = [{"hop_number": i + 1, "segment_ids": [i + 1], "summary": "..."} for i in range(min(2, n_segments))]
        example = {
            "pairs": [{
                "question": "...", "answer": "...", "query_type": next(t for t, n in counts.items() if n > 0),
                "reasoning_type": reasoning_types[0], "question_complexity": max(min_complexity, 3),
                "segment_ids": [h["segment_ids"][0] for h in hops], "hop_count": len(hops), "hop_contexts": hops,
            }]
        }
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.qa.format(
                total=sum(counts.values()), mix=mix, reasoning=", ".join(reasoning_types),
                min_complexity=min_complexity, max_hops=max_hops, artifacts=artifacts_json,
                segments=segments, example=json.dumps(example), n_segments=n_segments,
            )},
        ]

    def judge_messages(self, question: str, answer: str, segments: str) -> list[Message]:
        example = json.dumps({**{c: 8 for c in ("relevance", "accuracy", "context_support", "clarity", "overall")},
                              "rationale": "..."})
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.judge.format(question=question, answer=answer, segments=segments,
                                                          example=example)},
        ]

    def repair_messages(self, messages: list[Message], reply: str, problems: str) -> list[Message]:
        return [*messages, {"role": "assistant", "content": reply[:8000]},
                {"role": "user", "content": self.repair.format(problems=problems)}]


def render_segments(chunks: list[Chunk]) -> str:
    """Number the chunks ``Segment 1..n`` (in the given order), under a header per document."""
    lines: list[str] = []
    current = None
    for i, c in enumerate(chunks, start=1):
        if c.doc_id != current:
            current = c.doc_id
            title = f" — {c.title}" if c.title else ""
            lines.append(f"\n## Document: {c.doc_id}{title}")
        lines.append(f"Segment {i}: {' '.join(c.text.split())}")
    return "\n".join(lines).strip()


V1 = PromptSet(
    version="v1",
    system=(
        "You are an expert analyst who builds high-quality training data for retrieval (search) models. "
        "You only use information present in the provided text and you reply with one JSON object, no prose."
    ),
    artifacts=(
        "Read the document segments below and extract up to {n} items of each artifact type:\n{types}\n\n"
        "Each item is an object {{\"name\": short label, \"description\": one sentence grounded in the text}}. "
        "Use an empty list for a type the text does not support.\n"
        "Reply with one JSON object with exactly these keys, each a list: {shape}\n\n"
        "SEGMENTS:\n{segments}"
    ),
    qa=(
        "Write exactly {total} question-answer pairs that a user of this content would search for. "
        "Each question must be answerable only from the numbered segments below.\n\n"
        "Query types (produce exactly this many of each):\n{mix}\n\n"
        "Reasoning types (pick the one that fits each question): {reasoning}.\n\n"
        "Rules:\n"
        "- question: natural and self-contained; never mention 'segment', 'passage', 'the text' or 'the document'.\n"
        "- answer: concise and fully supported by the cited segments.\n"
        "- question_complexity: 1 (simple lookup) to 5 (deep synthesis); aim for at least {min_complexity}.\n"
        "- hop_count: 1 to {max_hops}; hop_contexts: one entry per hop with hop_number, the segment_ids it uses "
        "and a one-sentence summary of what it contributes.\n"
        "- segment_ids: the numbers of EVERY segment needed to answer (for multi-hop: the union over hops); "
        "only numbers 1 to {n_segments} exist.\n\n"
        "Key artifacts of these segments (target the important content):\n{artifacts}\n\n"
        "SEGMENTS:\n{segments}\n\n"
        "Reply with one JSON object shaped like: {example}"
    ),
    judge=(
        "Judge one synthetic question-answer pair for a retrieval training set, using only the cited segments.\n"
        "Score each criterion from 1 (bad) to 10 (excellent):\n"
        "- relevance: a real user of this content would plausibly ask it\n"
        "- accuracy: the answer is correct according to the segments\n"
        "- context_support: the cited segments contain everything needed to answer\n"
        "- clarity: the question is clear, specific and self-contained\n"
        "- overall: your overall verdict on keeping this pair\n\n"
        "QUESTION: {question}\nANSWER: {answer}\n\nCITED SEGMENTS:\n{segments}\n\n"
        "Reply with one JSON object shaped like: {example}"
    ),
    repair=(
        "Your reply could not be used: {problems}\n"
        "Reply again with only the corrected JSON object, following the requested shape exactly."
    ),
)

PROMPTS: dict[str, PromptSet] = {V1.version: V1}


def get_prompts(version: str) -> PromptSet:
    """The released prompt set ``version`` (``sdg.llm.prompt_version``)."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ConfigError(f"sdg.llm.prompt_version {version!r} is unknown; released: {sorted(PROMPTS)}") from None
