"""``embedforge`` command line: ``run`` (the whole pipeline, locally through kfp.local), ``compile`` (pipeline
YAML for Kubernetes) and one subcommand per stage to run a stage alone on artifact folders.

User-fixable errors print as one red line and exit 1 (no traceback); set EMBEDFORGE_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embedforge.config import PipelineConfig, load_config
from embedforge.errors import EmbedforgeError, describe_os_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file with config sections (see docs/configuration.md).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config field: KEY=VALUE, e.g. train.epochs=2.")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="More KEY=VALUE overrides.", show_default=False)]
BaseModelOpt = Annotated[Optional[str], typer.Option("--base-model", help="Base model folder or HF id (default: bundled all-MiniLM-L6-v2).")]


def _fail(msg: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # "[..]" is no markup
    raise typer.Exit(code)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (EmbedforgeError, OSError) as exc:  # OSError: a path given as a folder is a file, no permission ...
        if os.environ.get("EMBEDFORGE_DEBUG"):
            raise
        # an interrupted run exits like the signal would (130 Ctrl-C, 143 SIGTERM), other errors with 1
        _fail(describe_os_error(exc) if isinstance(exc, OSError) else str(exc), getattr(exc, "exit_code", 1))


def _output_file(path: Path, option: str, suffix: str) -> None:
    """Make ``path``'s folder, so that a file can be written at ``path``; one line naming ``option`` otherwise.

    Raises:
        InputError: ``path`` has another suffix, is a folder, or a file stands where one of its folders must be.
    """
    from embedforge.errors import InputError, refuse_file_in_the_way

    if path.suffix != suffix:
        raise InputError(f"{option} {path}: must end with {suffix}: choose another {option}")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder: choose a file name ending with {suffix} for {option}")
    refuse_file_in_the_way(path, option, folder=path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)


def _config(config: Optional[Path], sets: Optional[list[str]], extra: Optional[list[str]], base_model: Optional[str]) -> PipelineConfig:
    return load_config(config, [*(sets or []), *(extra or [])], base_model=base_model)


#: The environment variable ``--log-level`` sets (so the stages ``embedforge run`` starts log at the same level).
LOG_LEVEL_ENV = "EMBEDFORGE_LOG_LEVEL"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _version(value: bool) -> None:
    if value:
        from embedforge import __version__

        typer.echo(f"embedforge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    log_level: Annotated[Optional[str], typer.Option("--log-level", envvar=LOG_LEVEL_ENV, case_sensitive=False,
                                                     help=f"Log level of every command and of the stages "
                                                          f"`run` starts: {', '.join(LOG_LEVELS)} (default INFO).")] = None,
) -> None:
    """Turn a folder of your own documents into an embedding model that understands them, and ship it safely."""
    if log_level is not None:
        if log_level.upper() not in LOG_LEVELS:
            _fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        os.environ[LOG_LEVEL_ENV] = log_level.upper()  # inherited by the stage processes of `run`


def _setup_logging() -> None:
    """Logging to stderr at ``--log-level`` (default INFO), every line redacted
    (:class:`~embedforge.redact.RedactingFormatter`)."""
    from embedforge.redact import RedactingFormatter

    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------------------------------- run
@app.command()
def run(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: each run writes runs/<time>-<n>/ (model/, onnx/, triton/, report.html, logs/), "
                                                        "latest -> the newest, summary.json; mlflow.db and sdg_work/ are shared.")],
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Folder of .txt/.md/.rst/.html/.pdf/.docx/.pptx files or a BEIR corpus.jsonl (default: the bundled sample corpus).")] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="Bring-your-own pairs JSONL: replaces generated pairs.")] = None,
    eval_beir: Annotated[Optional[Path], typer.Option("--eval-beir", help="Also evaluate on this BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv).")] = None,
    base_model: BaseModelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overrides: OverridesArg = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Stream every component's log to the terminal.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Finish the latest interrupted/failed run under --out: its finished "
                                                         "stages are reused, not run again (same config and inputs only).")] = False,
) -> None:
    """Run the whole pipeline on this machine (kfp.local) and write the results to --out."""
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from embedforge.local.runner import run_pipeline
    from embedforge.pipelines.pipeline import STAGES
    from embedforge.sample_corpus import SAMPLE_CORPUS

    cfg = _guard(lambda: _config(config, set_, overrides, base_model))
    corpus = corpus or SAMPLE_CORPUS
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"),
                  TimeElapsedColumn(), console=console, transient=False, disable=verbose) as progress:
        bar = progress.add_task("starting", total=len(STAGES))
        done: set[str] = set()

        def on_event(stage: str, status: str) -> None:
            if status == "running":
                progress.update(bar, description=f"[cyan]{stage}[/]")
            elif status.startswith("progress: "):  # train's step, loss and ETA, also without -v
                progress.update(bar, description=f"[cyan]{stage}[/] {escape(status.removeprefix('progress: '))}")
            else:
                done.add(stage)
                mark = {"succeeded": "[green]✓[/]", "reused": "[green]↺[/]"}.get(status, "[red]✗[/]")
                progress.console.print(f"{mark} {stage}" + (" (reused)" if status == "reused" else ""))
                progress.update(bar, completed=len(done))

        summary = _guard(lambda: run_pipeline(cfg, corpus, out, pairs, eval_beir, on_event=on_event, echo_logs=verbose,
                                                 resume=resume))
        progress.update(bar, completed=len(STAGES), description="done")
    _print_summary(summary, out)


def _print_summary(summary: dict, out: Path) -> None:
    prof = summary.get("profile") or {}
    if prof.get("changed"):
        changes = ", ".join(f"{k}={v}" for k, v in prof["changed"].items())
        console.print(f"profile [bold]{prof['name']}[/]: {changes} (set them explicitly, or profile=gpu, to override)")
    sched = summary.get("train_schedule")
    if sched:  # what train trained with (train.schedule=auto chooses it per run) and what the search cost
        search = (f"; search {sched['probe_seconds']:.0f} s, {sched['probe_steps'] / max(sched['fixed_steps'], 1):.1f} x "
                  "the fixed run's steps" if sched.get("probe_steps") else "")
        if sched.get("reused_probes"):
            search += f" ({sched['reused_probes']} probes taken from the interrupted attempt)"
        console.print(f"train schedule {sched['mode']}: lr {sched['learning_rate']:.2e}, temperature "
                      f"{sched['temperature']:g}, {sched['epochs']:g} epochs"
                      + (", with the augmentation rows" if sched["augment"] else "")
                      + f" ({escape(sched['reason'])}){search}", highlight=False, soft_wrap=True)
    ev = summary.get("evaluation")
    if ev:
        table = Table(title="held-out evaluation (base -> fine-tuned)")
        table.add_column("metric")
        table.add_column("base", justify="right")
        table.add_column("fine-tuned", justify="right")
        for m in ("ndcg@10", "recall@10", "map@10", "mrr@10"):
            if m in ev["base"]:
                table.add_row(m, f"{ev['base'][m]:.4f}", f"{ev['finetuned'][m]:.4f}")
        if "external" in ev:
            for m in ("ndcg@10", "recall@10"):
                table.add_row(f"external {m}", f"{ev['external']['base'][m]:.4f}", f"{ev['external']['finetuned'][m]:.4f}")
        console.print(table)
    if "registry" in summary:
        console.print(f"registered {summary['registry']['name']} v{summary['registry']['version']}")
    if "promotion" in summary:
        p = summary["promotion"]
        console.print(("[green]" if p["promoted"] else "[yellow]") + escape(p["reason"]) + "[/]")
        if p.get("rollout"):
            r = p["rollout"]
            console.print(f"[green]served by {escape(r['url'])}: {escape(r['model_name'])} v{r['version']} ready after "
                          f"{r['ready_seconds']:.1f} s, probe cosine {r['probe_cosine']:.5f}[/]")
    report = (summary.get("outputs") or {}).get("report")
    if report:
        console.print(f"report: [link={Path(report).as_uri()}]{escape(report)}[/link]", highlight=False)
    if summary.get("attempt"):
        console.print(f"outputs: {escape(summary['attempt'])} (also {escape(str(out / 'latest'))})", highlight=False)
    console.print(f"summary: {out / 'summary.json'}")


# ------------------------------------------------------------------------------------------------ config
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overrides: OverridesArg = None,
    base_model: BaseModelOpt = None,
    defaults: Annotated[bool, typer.Option("--defaults", help="The built-in defaults, before any file, override "
                                           "or profile.")] = False,
    profile_for: Annotated[Optional[str], typer.Option("--profile-for", help="Also apply the compute profile as "
                                                       "`run` would on a machine with 'cpu' or 'gpu'.")] = None,
) -> None:
    """Print the resolved configuration (--config, --set and KEY=VALUE as `run` takes them) as YAML, every field
    with its description; the output is itself a --config file."""
    from embedforge.config.describe import describe_config

    if defaults and (config or set_ or overrides or base_model):
        _fail("--defaults shows the built-in configuration: leave out --config, --set, KEY=VALUE and --base-model")
    cfg = PipelineConfig() if defaults else _guard(lambda: _config(config, set_, overrides, base_model))
    if profile_for is not None:
        if profile_for not in ("cpu", "gpu"):
            _fail(f"--profile-for {profile_for!r}: use cpu or gpu")
        cfg, _ = _guard(lambda: cfg.resolved(cuda_available=profile_for == "gpu"))
    typer.echo(describe_config(cfg), nl=False)


# ----------------------------------------------------------------------------------------------- compile
@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pipeline YAML.")] = Path("pipelines/embedforge.yaml"),
    local: Annotated[bool, typer.Option("--local", help="Compile the variant without Kubernetes settings.")] = False,
    train_gpus: Annotated[int, typer.Option("--train-gpus", min=1, help="GPUs for the train step; more than 1 "
                                            "trains data-parallel under torchrun (sets train.processes=0).")] = 1,
    image: Annotated[Optional[str], typer.Option("--image", help="Container image of every step, e.g. "
                                                 "REGISTRY/embedforge@sha256:... (required for Kubernetes unless "
                                                 "$EMBEDFORGE_IMAGE is set).")] = None,
    inputs: Annotated[str, typer.Option("--inputs", help="How corpus, pairs, external BEIR set and base model "
                                        "enter (Kubernetes variant): 'artifacts' (URIs imported as KFP artifacts) "
                                        "or 'pvc' (paths on the data volume).")] = "artifacts",
    gpu_node_selector: Annotated[Optional[list[str]], typer.Option(
        "--gpu-node-selector", help="KEY=VALUE node label the GPU steps (mine, train, evaluate) must match "
        "(repeatable), e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3.")] = None,
    gpu_toleration: Annotated[Optional[list[str]], typer.Option(
        "--gpu-toleration", help="KEY[=VALUE]:EFFECT taint the GPU steps tolerate (repeatable; default "
        "nvidia.com/gpu:NoSchedule).")] = None,
) -> None:
    """Compile the pipeline to a KFP YAML package (for the KFP UI/API or `kfp run create`)."""
    from embedforge.cluster.image import BASE_IMAGE, DEFAULT_IMAGE, is_digest_pinned
    from embedforge.pipelines.inputs import INPUT_ROUTES
    from embedforge.pipelines.pipeline import (
        KubernetesSettings,
        compile_pipeline,
        parse_toleration,
    )

    if inputs not in INPUT_ROUTES:
        _fail(f"--inputs must be one of {', '.join(INPUT_ROUTES)}, got {inputs!r}")
    if not local and image is None and "EMBEDFORGE_IMAGE" not in os.environ:
        _fail(f"compile for Kubernetes needs --image: the default {DEFAULT_IMAGE} is not published; build and push "
              "yours (make images REGISTRY=your.registry/team PUSH=1) and pass --image "
              "your.registry/team/embedforge@sha256:... (--local compiles without one)")
    image = image or BASE_IMAGE
    if not local and not is_digest_pinned(image):
        console.print(f"[yellow]image {escape(image)} is not pinned by digest: a rebuilt image under the same tag "
                      "reuses cached steps; pass --image REGISTRY/embedforge@sha256:...[/]")
    _guard(lambda: _output_file(output, "--output", ".yaml"))
    selectors = []
    for item in gpu_node_selector or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            _fail(f"--gpu-node-selector {item!r}: expected KEY=VALUE")
        selectors.append((key, value))
    tolerations = tuple(gpu_toleration) if gpu_toleration else KubernetesSettings.gpu_tolerations
    for spec in tolerations:
        try:
            parse_toleration(spec)
        except ValueError as exc:
            _fail(f"--gpu-toleration: {exc}")
    settings = KubernetesSettings(train_gpus=train_gpus, image=image, gpu_node_selector=tuple(selectors),
                                  gpu_tolerations=tolerations)
    _guard(lambda: compile_pipeline(str(output), kubernetes=not local, k8s=settings, inputs=inputs))
    console.print(f"wrote {output}")


# ------------------------------------------------------------------------------------------------ submit
@app.command()
def submit(
    host: Annotated[str, typer.Option("--host", "--endpoint", envvar="KF_PIPELINES_ENDPOINT", show_envvar=True,
                                      help="KFP API URL, e.g. http://localhost:8888 (kubectl port-forward "
                                      "svc/ml-pipeline 8888:8888) or https://kubeflow.example.com/pipeline; "
                                      "--endpoint and $KF_PIPELINES_ENDPOINT as with the kfp CLI.")],
    package: Annotated[Optional[Path], typer.Option("--package", help="A compiled pipeline YAML (default: compile "
                                                    "the Kubernetes variant now, with --inputs/--image).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Run parameter KEY=VALUE (repeatable), e.g. "
                                                       "corpus_uri=s3://bucket/docs or train_config='{...}'.")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="KFP experiment (created if missing).")] = "embedforge",
    run_name: Annotated[Optional[str], typer.Option("--run-name", help="Run display name.")] = None,
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="Profile namespace (multi-user "
                                                     "Kubeflow).")] = None,
    service_account: Annotated[str, typer.Option("--service-account", help="ServiceAccount of the run's pods "
                                                 "(manifests/; '' for the KFP default).")] = "embedforge-pipeline",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run; exit 0 only if it succeeds.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait follows the run.")] = 24 * 3600,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between --wait's state reads.")] = 15.0,
    inputs: Annotated[str, typer.Option("--inputs", help="Without --package: 'artifacts' or 'pvc'.")] = "artifacts",
    image: Annotated[Optional[str], typer.Option("--image", help="Without --package: every step's image.")] = None,
) -> None:
    """Submit a run to Kubeflow Pipelines (token from $KF_PIPELINES_TOKEN, never printed); print its URL."""
    import tempfile

    from embedforge.cluster import submit as kfp_submit

    with tempfile.TemporaryDirectory(prefix="embedforge-submit-") as tmp:
        if package is None:
            package = Path(tmp) / "embedforge.yaml"
            compile_(output=package, local=False, train_gpus=1, image=image, inputs=inputs)
        result = _guard(lambda: kfp_submit.submit(host, package, kfp_submit.parse_params(param or []),
                                                  experiment=experiment, run_name=run_name, wait=wait,
                                                  namespace=namespace, service_account=service_account or None,
                                                  timeout_s=timeout, poll_s=poll))
    typer.echo(result.run_url)  # stdout: the one thing a script captures
    if wait:
        console.print(f"run {result.run_id}: {result.state}", highlight=False)
        if not result.succeeded:
            raise typer.Exit(1)


# -------------------------------------------------------------------------------- one subcommand per stage
Dir = Annotated[Path, typer.Option(help="Artifact folder.")]


def _stage(fn: Callable[[PipelineConfig], Any], config: Optional[Path], sets: Optional[list[str]], base_model: Optional[str] = None,
           out: Optional[Path] = None) -> None:
    """Run one stage: config, then ``fn(cfg)``; its manifest as JSON on stdout. ``out``, the stage's output folder,
    is checked first: a file where it or a folder above it must be is one line before the stage's work, not after."""
    from embedforge.local.attempts import check_out

    _setup_logging()
    if out is not None:
        _guard(lambda: check_out(out))
    cfg = _guard(lambda: _config(config, sets, None, base_model))
    result = _guard(lambda: fn(cfg))
    if result is None:  # a torchrun worker other than rank 0
        return
    typer.echo(json.dumps(result.model_dump(mode="json"), indent=2, default=str))


@app.command()
def ingest(corpus: Path = typer.Option(..., help="Corpus folder or corpus.jsonl."), out: Dir = ..., base_model: BaseModelOpt = None,
           config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Chunk a corpus and split it by document."""
    from embedforge.stages import ingest as stage

    _stage(lambda c: stage.run(corpus, out, c.ingest, base_model=c.base_model), config, set_, base_model, out=out)


@app.command()
def sdg(chunks: Dir = ..., out: Dir = ..., pairs: Optional[Path] = typer.Option(None, help="Bring-your-own pairs JSONL."),
        base_model: BaseModelOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Generate (or import) query/positive pairs."""
    from embedforge.stages import sdg as stage

    _stage(lambda c: stage.run(chunks, out, c.sdg, pairs_file=str(pairs) if pairs else None, base_model=c.base_model, model_cfg=c.model), config, set_, base_model, out=out)


@app.command()
def validate(chunks: Dir = ..., pairs: Dir = ..., out: Dir = ..., config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Run the Great Expectations suite over the pairs."""
    from embedforge.stages import validate as stage

    _stage(lambda c: stage.run(chunks, pairs, out, c.validate_), config, set_, out=out)


@app.command()
def mine(chunks: Dir = ..., pairs: Dir = ..., out: Dir = ..., base_model: BaseModelOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Mine hard negatives with FAISS."""
    from embedforge.stages import mine as stage

    _stage(lambda c: stage.run(chunks, pairs, out, c.mine, base_model=c.base_model, model_cfg=c.model), config, set_, base_model, out=out)


@app.command()
def train(mined: Dir = ..., out: Dir = ..., base_model: BaseModelOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune the bi-encoder contrastively."""
    from embedforge.registry.live_run import use_destination
    from embedforge.stages import train as stage
    from embedforge.stages.train.work import remove_if_empty

    def run_stage(c: PipelineConfig) -> Any:
        use_destination(c.register_.tracking_uri, c.register_.experiment)  # live run: with $MLFLOW_TRACKING_URI
        default = not c.train.work_dir
        if default:  # kept work (probes, checkpoints) private to this output, not a folder other users share
            c.train.work_dir = str(out.absolute() / ".train_work")
        try:
            return stage.run(mined, out, c.train, base_model=c.base_model, prompts=c.prompts, model_cfg=c.model)
        finally:
            if default:
                remove_if_empty(c.train.work_dir)  # (what an interrupted run keeps stays, for the rerun)

    _stage(run_stage, config, set_, base_model, out=out)


@app.command()
def evaluate(chunks: Dir = ..., pairs: Dir = ..., model: Dir = ..., out: Dir = ..., mined: Optional[Path] = typer.Option(None, help="Mine output (reuses base embeddings)."),
             eval_beir: Optional[Path] = typer.Option(None, help="External BEIR folder."), base_model: BaseModelOpt = None,
             config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """BEIR metrics, base vs fine-tuned."""
    from embedforge.stages import evaluate as stage

    _stage(lambda c: stage.run(chunks, pairs, c.base_model, model, out, c.evaluate,
                               base_embeddings_dir=str(mined) if mined else None,
                               eval_beir=str(eval_beir) if eval_beir else None, model_cfg=c.model),
           config, set_, base_model, out=out)


@app.command()
def export(model: Dir = ..., chunks: Dir = ..., out: Dir = ..., config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Export to ONNX (pooling + normalisation in the graph) with a parity check."""
    from embedforge.stages import export as stage

    _stage(lambda c: stage.run(model, chunks, out, c.export), config, set_, out=out)


TrackingOpt = Annotated[str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI.")]


@app.command()
def register(model: Dir = ..., onnx: Dir = ..., evaluation: Dir = ..., validation: Dir = ..., out: Dir = ...,
             pairs: Optional[Path] = typer.Option(None, help="SDG output (its counts become sdg_* metrics)."),
             tracking_uri: TrackingOpt = "", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Log the run to MLflow and register a new model version."""
    from embedforge.stages import register as stage

    _stage(lambda c: stage.run(model, onnx, evaluation, validation, out, c.register_, tracking_uri, params=c.to_dict(),
                               pairs_dir=pairs), config, set_, out=out)


@app.command()
def gate(evaluation: Dir = ..., registry: Dir = ..., chunks: Dir = ..., pairs: Dir = ..., out: Dir = ...,
         tracking_uri: TrackingOpt = "", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Decide promotion: beats base by the margin and holds up against the current champion (by default on the
    eval queries' paired intervals, gate.rule)."""
    from embedforge.stages import gate as stage

    _stage(lambda c: stage.run(evaluation, registry, chunks, pairs, out, c.gate, c.evaluate, tracking_uri), config, set_, out=out)


@app.command()
def promote(decision: Dir = ..., registry: Dir = ..., onnx: Dir = ..., out: Dir = ..., tracking_uri: TrackingOpt = "",
            config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Set the champion alias and write the Triton model repository."""
    from embedforge.stages import promote as stage

    _stage(lambda c: stage.run(decision, registry, onnx, out, c.triton, tracking_uri), config, set_, out=out)



@app.command()
def rollback(model: str = typer.Option(..., "--model", help="Registered model name."),
             to: Optional[str] = typer.Option(None, "--to", help="Version to serve (default: the 'previous' alias)."),
             tracking_uri: TrackingOpt = "", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Move the champion alias back and make Triton serve that version (triton.repository_dir / server_url)."""
    from embedforge.serving import rollback as stage

    _stage(lambda c: stage.run(model, c.triton, tracking_uri, to, alias=c.gate.alias), config, set_)


@app.command()
def embed(texts: list[str] = typer.Argument(..., help="Texts to embed."),
          url: str = typer.Option(..., "--url", help="Triton HTTP endpoint, e.g. http://localhost:8000."),
          input_type: str = typer.Option("query", "--input-type", help="query or document (passage, NIM's name, "
                                         "is the same): which saved prompt."),
          model: str = typer.Option("embedforge_embedder", "--model", help="Triton model (ensemble) name.")) -> None:
    """Embed texts with the served model; prints {"embeddings": [[...], ...], ...} as JSON."""
    from embedforge.serving.client import embed as call

    if input_type not in ("query", "document", "passage"):
        _fail(f"--input-type {input_type!r}: use query or document")
    emb = _guard(lambda: call(url, texts, input_type=input_type, model=model))
    typer.echo(json.dumps({"model": model, "input_type": input_type, "dim": int(emb.shape[1]),
                           "embeddings": emb.tolist()}))


@app.command()
def serve(
    url: Annotated[str, typer.Option("--url", help="Triton's HTTP endpoint, e.g. http://localhost:8000 (inference only: no admin key).")],
    model: Annotated[str, typer.Option("--model", help="Triton model (ensemble) name, triton.model_name; clients send it as `model`.")] = "embedforge_embedder",
    aliases: Annotated[Optional[list[str]], typer.Option("--alias", help="Another name clients may send as `model` (repeatable), e.g. the registered model's.")] = None,
    repository: Annotated[Optional[Path], typer.Option("--repository", help="The model repository Triton serves from (read-only is enough): usage tokens "
                                                                           "are counted with the served version's own tokenizer; without it (or --tokenizer) they are estimates.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="A tokenizer folder (tokenizer.json, prompts, max_seq_length) to count usage tokens with instead.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", min=1, help="Rows per Triton request (default: the ensemble's max_batch_size).")] = None,
    max_inputs: Annotated[int, typer.Option("--max-inputs", min=1, help="Most inputs in one request; more is a 413.")] = 2048,
    max_inflight: Annotated[int, typer.Option("--max-inflight", min=1, help="Triton requests in flight at once; requests arriving meanwhile are coalesced.")] = 32,
    window_ms: Annotated[float, typer.Option("--window-ms", min=0, help="Hold a batch that is not full this long for more requests (0: send at once).")] = 0.0,
    max_padding: Annotated[float, typer.Option("--max-padding", help="Padding a coalesced batch may add, as a fraction of its real tokens; "
                                                                    "negative: no limit (padding is nearly free on a GPU, as costly as real tokens on a CPU).")] = 0.25,
    timeout_s: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds one Triton request may take.")] = 60.0,
    refresh_s: Annotated[float, typer.Option("--refresh", min=0.001, help="Seconds between re-reads of the served version (after a promotion or rollback).")] = 10.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (costs throughput).")] = False,
) -> None:
    """Serve the OpenAI-compatible embeddings API (POST /v1/embeddings, GET /v1/models) in front of Triton."""
    from embedforge.serving.openai_api import ApiSettings
    from embedforge.serving.openai_api import serve as run_api

    _setup_logging()

    def start() -> None:
        settings = ApiSettings(triton_url=url, model=model, aliases=tuple(aliases or ()),
                               repository=str(repository) if repository else None,
                               tokenizer=str(tokenizer) if tokenizer else None, max_batch=max_batch,
                               max_inputs=max_inputs, max_inflight=max_inflight, window_ms=window_ms,
                               max_padding=max_padding if max_padding >= 0 else None, timeout_s=timeout_s,
                               refresh_s=refresh_s)
        run_api(settings, host, port, access_log=access_log)

    _guard(start)


if __name__ == "__main__":  # pragma: no cover
    app()
