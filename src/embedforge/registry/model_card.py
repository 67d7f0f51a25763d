"""The model card of a registered version: ``README.md`` in Hugging Face model-card format, built from the run's
stage artifacts.

The card is what a person (or the Hugging Face Hub, or MLflow's UI) reads to know what the model is: YAML front
matter (``base_model``, ``library_name: sentence-transformers``, ``pipeline_tag: sentence-similarity``, tags, the
base model's licence when its folder states one, and ``model-index`` with the fine-tuned model's evaluation numbers,
exactly those of ``evaluation.json``), then the base model, the prompts, the pairs it was trained on (sdg, validate and
train manifests), base vs fine-tuned metrics with paired-bootstrap 95 % confidence intervals over the per-query
records evaluate wrote (:func:`embedforge.retrieval.stats.compare`), the training settings and cost, how to load it
(sentence-transformers, ONNX, MLflow, Triton, the OpenAI-compatible endpoint) and its limits.

:mod:`embedforge.stages.register` writes it as ``README.md`` of the version's model folder (replacing the card
sentence-transformers writes on save) and sets the same text as the version's description.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from embedforge.contracts import (
    EvaluationResult,
    Manifest,
    has_manifest,
    read_manifest,
    read_per_query,
)
from embedforge.errors import InputError

log = logging.getLogger(__name__)

#: The card's file name in a model folder (what the Hugging Face Hub and sentence-transformers read).
CARD_FILE = "README.md"
#: Tags every card carries.
TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "embedforge", "domain-adaptation")
#: MLflow keeps at most this many characters of a model version's description (its SQL stores' column width).
MAX_DESCRIPTION = 5000


def _manifest(folder: str | Path | None) -> Manifest | None:
    """The manifest of a finished artifact folder, or None when there is none (an input the caller did not have)."""
    return read_manifest(folder) if folder is not None and has_manifest(folder) else None


def front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a card (between the leading ``---`` lines) as a dict.

    Raises:
        InputError: The text has no front matter, or it is not a YAML mapping.
    """
    head, sep, rest = card.partition("---\n")
    if head or not sep or "\n---\n" not in "\n" + rest:
        raise InputError("model card: no YAML front matter (a '---' line, YAML, a '---' line) at its top")
    data = yaml.safe_load(rest.split("---\n", 1)[0])
    if not isinstance(data, dict):
        raise InputError("model card: its front matter is not a YAML mapping")
    return data


def base_license(base_model: str) -> str:
    """The licence the base model's own card states (``license:`` in its front matter), or "" when unknown.

    A local folder's ``README.md`` is read; a hub id is looked up only in the local Hugging Face cache (never
    downloaded)."""
    readme: Path | None = Path(base_model) / CARD_FILE
    if not readme.is_file():
        readme = None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base_model, CARD_FILE)
            readme = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not a hub id, no cache: the licence is simply unknown
            readme = None
    if readme is None:
        return ""
    try:
        value = front_matter(readme.read_text(encoding="utf-8")).get("license", "")
    except (OSError, UnicodeDecodeError, InputError, yaml.YAMLError):
        return ""
    return value if isinstance(value, str) else ""


def _model_index(name: str, evaluation: EvaluationResult) -> list[dict[str, Any]]:
    """``model-index``: the fine-tuned model's metrics on the held-out split (and on the external collection)."""
    def metrics(values: dict[str, float]) -> list[dict[str, Any]]:
        return [{"type": m.replace("@", "_at_"), "value": v, "name": m} for m, v in values.items()]

    results = [{"task": {"type": "retrieval", "name": "Retrieval"},
                "dataset": {"type": "held-out", "name": "held-out split of the run's pairs"},
                "metrics": metrics(evaluation.finetuned)}]
    if evaluation.external is not None:
        results.append({"task": {"type": "retrieval", "name": "Retrieval"},
                        "dataset": {"type": "external", "name": Path(evaluation.external.path).name or "external"},
                        "metrics": metrics(evaluation.external.finetuned)})
    return [{"name": name, "results": results}]


def _metrics_table(evaluation_dir: Path, evaluation: EvaluationResult) -> list[str]:
    """Base vs fine-tuned per metric at the primary metric's cut-off, with the 95 % interval of the gain and
    wins/ties/losses over the queries (every cut-off's fine-tuned number is in ``model-index``)."""
    from embedforge.retrieval.stats import BOOTSTRAP_RESAMPLES, CONFIDENCE, compare

    try:
        records = read_per_query(evaluation_dir)
    except InputError:
        records = []
    k = evaluation.primary_metric.partition("@")[2]
    shown = [m for m in evaluation.finetuned if m.partition("@")[2] == k] or list(evaluation.finetuned)
    lines = [f"| metric | base | fine-tuned | gain | {CONFIDENCE:.0%} CI of the gain | wins / ties / losses |",
             "|---|---|---|---|---|---|"]
    for m in shown:
        fine = evaluation.finetuned[m]
        base = evaluation.base.get(m)
        gain = f"{fine - base:+.4f}" if base is not None else ""
        ci, wtl = "", ""
        if records and m in records[0].finetuned and m in records[0].base:
            c = compare(records, m)
            if c.interval is not None:
                ci = f"[{c.interval.low:+.4f}, {c.interval.high:+.4f}]"
            wtl = f"{c.wins} / {c.ties} / {c.losses}"
        lines.append(f"| {m} | {base:.4f} | {fine:.4f} | {gain} | {ci} | {wtl} |" if base is not None
                     else f"| {m} |  | {fine:.4f} |  |  |  |")
    n = len(records) or evaluation.counts.get("eval_queries", 0)
    lines.append("")
    lines.append((f"On {n} held-out queries (paired bootstrap over the queries, {BOOTSTRAP_RESAMPLES} resamples)"
                  if records else "No per-query records: no confidence intervals.")
                 + ("; the other cut-offs are in `model-index` above." if len(shown) < len(evaluation.finetuned) else "."))
    if evaluation.external is not None:
        ext = evaluation.external
        lines += ["", f"External collection `{Path(ext.path).name}`:", "",
                  "| metric | base | fine-tuned |", "|---|---|---|"]
        lines += [f"| {m} | {ext.base.get(m, float('nan')):.4f} | {v:.4f} |" for m, v in ext.finetuned.items()]
    return lines


def _data_lines(pairs: Manifest | None, validation: Manifest | None, train: Manifest | None) -> list[str]:
    """Where the training pairs came from and how many were used, from the sdg, validate and train manifests."""
    lines = []
    if pairs is not None:
        c = pairs.counts
        sources = ", ".join(f"{k.removeprefix('source_')} {v}" for k, v in sorted(c.items()) if k.startswith("source_"))
        lines.append(f"- pairs ({pairs.result.mode}): {c.get('pairs', 0)} — {c.get('train_pairs', 0)} train, "
                     f"{c.get('eval_pairs', 0)} held out" + (f"; by source: {sources}" if sources else ""))
    if validation is not None:
        c = validation.counts
        lines.append(f"- validation: {c.get('expectations', 0) - c.get('failed_expectations', 0)} of "
                     f"{c.get('expectations', 0)} checks passed")
    if train is not None:
        c = train.counts
        lines.append(f"- training rows (query, positive, mined hard negatives): {c.get('examples', 0)}"
                     + (f", {c['augment_rows']} of them augmentation rows" if c.get("augment_rows") else ""))
    return lines or ["Not recorded: the model folder and its inputs carry no stage manifests."]


def _training_lines(train: Manifest | None) -> list[str]:
    if train is None:
        return ["Not recorded: no train stage wrote this model folder (no train manifest in it)."]
    r, cfg = train.result, train.config
    sched = r.schedule
    lr = sched.learning_rate if sched is not None else cfg.get("learning_rate")
    epochs = sched.epochs if sched is not None else cfg.get("epochs")
    rows = [("steps", train.counts.get("steps")), ("epochs", f"{epochs:g}" if isinstance(epochs, float) else epochs),
            ("batch size", cfg.get("batch_size")), ("learning rate", f"{lr:.2e}" if isinstance(lr, float) else lr),
            ("temperature", sched.temperature if sched is not None else cfg.get("temperature")),
            ("schedule", f"{sched.mode}: {sched.reason}" if sched is not None else ""),
            ("final loss", f"{r.final_loss:.4f}"),
            ("seconds", f"{r.train_seconds:.1f}"), ("examples / s", f"{r.examples_per_second:.1f}"),
            ("device", f"{r.device} × {r.processes}" if r.processes > 1 else r.device), ("precision", r.precision),
            ("WiSE-FT base weight", f"{r.base_weight:g}")]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]


def _usage_lines(name: str, prompts: dict[str, str]) -> list[str]:
    q = ', prompt_name="query"' if prompts.get("query") else ""
    d = ', prompt_name="document"' if prompts.get("document") else ""
    return [
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer(\"path/to/this/folder\")",
        f"queries = model.encode([\"how do I rotate the keys?\"]{q})",
        f"documents = model.encode([\"Keys are rotated every 90 days.\"]{d})",
        "```",
        "",
        "- ONNX: `onnx/model.onnx` of the run (pooling and normalisation in the graph; `artifacts/onnx/` here), "
        "with onnxruntime and this folder's tokenizer.",
        f"- MLflow: `mlflow.pyfunc.load_model(\"models:/{name}/<version>\").predict(df, "
        "params={\"prompt_name\": \"query\"})` (a `text` column in, float32 embeddings out).",
        "- Triton (once promoted): `embedforge embed --url http://TRITON:8000 --input-type query \"...\"`.",
        "- OpenAI-compatible: `embedforge serve --url http://TRITON:8000`, then `POST /v1/embeddings` with "
        "`{\"model\": \"embedforge_embedder\", \"input\": [...], \"input_type\": \"query\"}` "
        "(`document` for documents).",
    ]


def _saved_prompts(model_dir: Path) -> dict[str, str]:
    """The prompts saved in a sentence-transformers folder (``config_sentence_transformers.json``)."""
    from embedforge.contracts import read_json

    path = model_dir / "config_sentence_transformers.json"
    prompts = read_json(path).get("prompts") if path.is_file() else None
    return {k: v for k, v in prompts.items() if isinstance(v, str)} if isinstance(prompts, dict) else {}


def build_card(model_dir: str | Path, evaluation_dir: str | Path, model_name: str, base_model: str = "",
               run_id: str = "", validation_dir: str | Path | None = None, pairs_dir: str | Path | None = None) -> str:
    """The model card of the fine-tuned model in ``model_dir`` (its train manifest, when a train stage wrote it)
    as evaluated in ``evaluation_dir`` (``evaluation.json``, ``per_query.jsonl``); the pairs' counts come from
    ``pairs_dir`` (sdg) and ``validation_dir`` (validate) when given. ``base_model``: used when no train manifest
    names it.

    Raises:
        InputError: ``evaluation_dir`` holds no finished evaluate artifact.
    """
    from embedforge.contracts import TrainResult, read_result

    model_dir = Path(model_dir)
    train = read_manifest(model_dir, TrainResult) if has_manifest(model_dir) else None
    evaluation = read_result(evaluation_dir, EvaluationResult)
    base = train.result.base_model if train is not None else (base_model or evaluation.models.get("base", ""))
    licence = base_license(base) if base else ""
    meta: dict[str, Any] = {"base_model": base, "library_name": "sentence-transformers",
                            "pipeline_tag": "sentence-similarity", "tags": list(TAGS)}
    if licence:
        meta["license"] = licence
    meta["model-index"] = _model_index(model_name, evaluation)
    prompts = train.result.prompts if train is not None else _saved_prompts(model_dir)
    primary = evaluation.primary_metric
    b, f = evaluation.base.get(primary), evaluation.finetuned.get(primary)
    headline = f" {primary} {b:.4f} -> {f:.4f} on the held-out split." if b is not None and f is not None else ""
    body = [
        f"# {model_name}", "",
        f"`{base}` fine-tuned by embedforge on pairs generated from (or given for) your documents"
        + (f" (MLflow run `{run_id}`)" if run_id else "") + f".{headline}", "",
        "## Prompts", "",
        "Prepended to the text before encoding; saved in the model as its `query` and `document` prompts.", "",
        "| role | prompt |", "|---|---|",
        *[f"| {role} | `{prompts.get(role, '')}` |" for role in ("query", "document")], "",
        "## Training data", "",
        *_data_lines(_manifest(pairs_dir), _manifest(validation_dir), train), "",
        "## Evaluation", "",
        *_metrics_table(Path(evaluation_dir), evaluation), "",
        "## Training", "",
        *_training_lines(train), "",
        "## Usage", "",
        *_usage_lines(model_name, prompts), "",
        "## Limits", "",
        "- Tuned for retrieval over the documents it was trained on; elsewhere it may do worse than its base model.",
        "- The held-out queries are generated like the training ones (or split from your pairs), so they can be "
        "easier than real questions; a human-judged collection (`--eval-beir`) is the better judge.",
        "- Texts longer than the model's maximum sequence length are truncated (the end of a long text is not seen).",
        "- Confidence intervals cover the sampling of held-out queries, not of other document collections.",
    ]
    yaml_text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
    return f"---\n{yaml_text}---\n\n" + "\n".join(body) + "\n"


def description(card: str) -> str:
    """The card as an MLflow version description: the card itself, cut at a line within MLflow's limit."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    tail = "\n\n(cut: the full card is README.md in the version's model folder)\n"
    return card[:card.rfind("\n", 0, MAX_DESCRIPTION - len(tail))] + tail


def write_card(folder: str | Path, card: str) -> Path:
    """Write ``card`` as ``folder/README.md``, replacing a card already there (sentence-transformers writes one)."""
    path = Path(folder) / CARD_FILE
    path.unlink(missing_ok=True)  # a hard link to another folder's file must not be written through
    path.write_text(card, encoding="utf-8")
    return path


__all__ = ["CARD_FILE", "MAX_DESCRIPTION", "base_license", "build_card", "description", "front_matter", "write_card"]
