"""Typed configuration: defaults, YAML + KEY=VALUE overrides, clear errors naming the field."""

import pytest
from pydantic import ValidationError

from embedforge.config import PipelineConfig, TrainConfig, load_config, parse_overrides
from embedforge.errors import ConfigError


def test_defaults_match_the_issue():
    cfg = PipelineConfig()
    assert cfg.ingest.sentences_per_chunk == 5 and cfg.ingest.min_chunk_chars == 50
    assert cfg.ingest.eval_fraction == 0.2
    assert cfg.mine.num_negatives == 4 and cfg.mine.margin == 0.0
    assert cfg.export.opset >= 17 and cfg.export.parity_min_cosine == 0.999
    assert cfg.gate.alias == "champion" and cfg.gate.metric == "ndcg@10"
    assert {1, 5, 10, 100} <= set(cfg.evaluate.all_k)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  learning_rate: 1.0e-5\nprompts:\n  query: 'q: '\n")
    cfg = load_config(f, ["train.epochs=2", "evaluate.extra_k=[3, 20]", "prompts.document=passage: "])
    assert cfg.train.epochs == 2 and cfg.train.learning_rate == 1e-5
    assert cfg.prompts.query == "q: " and cfg.prompts.document == "passage: "
    assert 3 in cfg.evaluate.all_k and 20 in cfg.evaluate.all_k


def test_override_strings_keep_spaces():
    assert parse_overrides(["prompts.query=query: "]) == {"prompts": {"query": "query: "}}


@pytest.mark.parametrize(
    "override, field",
    [("train.epochs=-1", "train.epochs"), ("trian.epochs=1", "trian"), ("mine.margin=2", "mine.margin"),
     ("gate.metric=ndcg@7", "gate.metric")],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field.split(".")[0] in str(err.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_cpu_profile_caps_only_what_the_user_left_default():
    cfg = load_config(None, ["train.epochs=3"])
    cpu, changed = cfg.resolved(cuda_available=False)
    assert cpu.profile == "cpu" and cpu.train.epochs == 3  # the user's value wins
    assert changed == {"sdg.max_pairs": 1000, "train.batch_size": 16, "train.learning_rate": 5e-5}
    assert cpu.sdg.max_pairs == 1000 and cpu.train.learning_rate == 5e-5
    gpu, changed = cfg.resolved(cuda_available=True)  # the gpu profile: the schedule chosen from the pairs
    assert gpu.profile == "gpu" and changed == {"train.schedule": {"mode": "auto"}, "sdg.augment": 1.0}
    assert cpu.train.schedule.mode == "fixed" and cpu.sdg.augment == 0
    assert gpu.train.schedule.mode == "auto" and gpu.train.schedule.folds == 2 and gpu.train.epochs == 3
    assert gpu.sdg.max_pairs == PipelineConfig().sdg.max_pairs and gpu.sdg.augment == 1.0
    mine_only, changed = load_config(None, ["train.schedule.mode=fixed"]).resolved(cuda_available=True)
    assert mine_only.train.schedule.mode == "fixed" and changed == {}  # a schedule the user set is kept ...
    assert mine_only.sdg.augment == 0  # ... and then no augmentation rows: a fixed schedule would train on them all
    own, changed = load_config(None, ["sdg.augment=0.5"]).resolved(cuda_available=True)
    assert own.sdg.augment == 0.5 and changed == {"train.schedule": {"mode": "auto"}}
    for torchrun in (["train.processes=0"], ["train.nodes=2"]):  # torchrun: the probes run data-parallel
        several, changed = load_config(None, torchrun).resolved(cuda_available=True)
        assert several.sdg.augment == 1.0 and several.train.schedule.mode == "auto"
    fsdp = ["train.processes=0", "train.sharding=fsdp"]
    assert load_config(None, fsdp).resolved(cuda_available=True)[0].sdg.augment == 1.0  # FSDP probes too
    sharded, changed = load_config(None, [*fsdp, "train.base_weight=0.3"]).resolved(cuda_available=True)
    assert sharded.sdg.augment == 0 and "sdg.augment" not in changed  # FSDP + WiSE-FT: no search, no augmentation
    forced, changed = load_config(None, ["profile=cpu"]).resolved(cuda_available=True)
    assert forced.train.epochs == 2.0 and set(changed) == {"sdg.max_pairs", "train.epochs", "train.batch_size",
                                                                     "train.learning_rate"}
    byo, changed = PipelineConfig().resolved(cuda_available=False, pairs_given=True)  # the user's pairs: 1 epoch
    assert changed == {"train.epochs": 1.0, "train.batch_size": 16, "train.learning_rate": 5e-5}
    assert byo.sdg.max_pairs == PipelineConfig().sdg.max_pairs and byo.train.learning_rate == 5e-5
    mine, changed = load_config(None, ["train.learning_rate=2e-5"]).resolved(cuda_available=False, pairs_given=True)
    assert mine.train.learning_rate == 2e-5 and "train.learning_rate" not in changed  # the user's rate wins


def test_model_settings_are_top_level_and_the_old_place_says_so():
    """``model`` is one section beside ``base_model`` (every stage that loads the base model reads it); a config
    still using ``train.model`` fails with the rename, not with a bare "extra field"."""
    from embedforge.config import PipelineConfig

    cfg = PipelineConfig.model_validate({"model": {"pooling": "cls", "trust_remote_code": True}})
    assert cfg.model.pooling == "cls" and cfg.to_dict()["model"]["trust_remote_code"] is True
    with pytest.raises(ValueError, match=r"train\.model\.\* is now model\.\*"):
        PipelineConfig.model_validate({"train": {"model": {"pooling": "cls"}}})


def test_a_whole_config_check_reads_as_one_plain_line():
    """A check of the whole config (no field path) prints its message alone, without pydantic's prefix."""
    from embedforge.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.model.pooling=cls"])
    assert str(exc.value).startswith("invalid configuration: train.model.* is now model.* (top level)")
    with pytest.raises(ConfigError, match=r"^invalid configuration: gate\.metric uses k=7"):
        load_config(None, ["gate.metric=ndcg@7"])


def test_tail_averaging_with_fsdp_sharding_is_refused_with_the_fix():
    with pytest.raises(ValidationError, match="average_last.*sharding=fsdp.*set train.average_last=0"):
        TrainConfig(average_last=0.5, sharding="fsdp")
    assert TrainConfig(average_last=0.5).average_last == 0.5 and TrainConfig(sharding="fsdp").sharding == "fsdp"


# ------------------------------------------------------------------------- checked when the config is loaded
def _numbers(model: type, prefix: str = ""):
    """``(model, field name, dotted name, in a container?)`` of every number a config holds: int/float fields, and
    the ints/floats inside lists, tuples and dict values; nested models are walked."""
    import types
    import typing

    from pydantic import BaseModel

    def kinds(ann) -> set[str]:
        origin = typing.get_origin(ann)
        if origin in (typing.Union, types.UnionType):
            return set().union(*(kinds(a) for a in typing.get_args(ann) if a is not type(None)))
        if origin in (list, tuple, dict):
            args = typing.get_args(ann)
            inner = set().union(*(kinds(a) for a in (args[1:] if origin is dict else args) if a is not Ellipsis))
            return {"contained" for k in inner if k in ("number", "contained")}
        return {"number"} if ann in (int, float) else set()

    for name, info in model.model_fields.items():
        ann = info.annotation
        sub = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            yield from _numbers(sub[0], f"{prefix}{name}.")
        for kind in kinds(ann):
            yield model, name, f"{prefix}{name}", kind == "contained"


def _with_first_number(value, number):
    """``value`` (a default: list, tuple, dict) with its first number replaced by ``number``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number, True
    if isinstance(value, dict):
        items = list(value.items())
        for i, (k, v) in enumerate(items):
            new, done = _with_first_number(v, number)
            if done:
                return dict(items[:i] + [(k, new)] + items[i + 1:]), True
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            new, done = _with_first_number(v, number)
            if done:
                return type(value)([*value[:i], new, *value[i + 1:]]), True
    return value, False


def test_every_number_of_every_config_has_both_bounds():
    """An absurd value (1e18 rows per batch, a seed of -1) must fail at load, not in the stage that uses it after
    an hour of mining: every int and float field of every config model has a lower and an upper bound, and every
    list/tuple/dict of numbers refuses a huge and a negative one."""
    import annotated_types as at

    missing = []
    for model, name, dotted, contained in _numbers(PipelineConfig):
        if not contained:
            metadata = model.model_fields[name].metadata
            if not (any(isinstance(m, (at.Ge, at.Gt)) for m in metadata)
                    and any(isinstance(m, (at.Le, at.Lt)) for m in metadata)):
                missing.append(f"{dotted}: no ge/gt and le/lt")
            continue
        default = model.model_fields[name].get_default(call_default_factory=True)
        for absurd in (10**12, -(10**12)):
            value, done = _with_first_number(default, absurd)
            if not done and isinstance(default, list):  # an empty list: try one element
                value, done = [absurd], True
            assert done, f"{dotted}: give it a default holding a number so that this test can try one"
            try:
                model.model_validate({name: value})
            except ValidationError:
                continue
            missing.append(f"{dotted}: accepts {value!r}")
    assert not missing, "numbers without both bounds:\n" + "\n".join(missing)


@pytest.mark.parametrize("override, field", [
    ("train.batch_size=1.0e+18", "train.batch_size"), ("train.seed=-1", "train.seed"), ("ingest.seed=1.0e+30", "ingest.seed"),
    ("sdg.max_pairs=1.0e+15", "sdg.max_pairs"), ("train.learning_rate=1.0e+9", "train.learning_rate"),
    ("evaluate.k_values=[1, 100000000000]", "evaluate.k_values: every k must be >= 1 and <= 100000"), ("sdg.llm.qa.timeout_s=1.0e+12", "sdg.llm.qa.timeout_s"),
    ("train.schedule.candidates=[[1.0, 1.0e+30]]", "train.schedule.candidates: every candidate factor must be > 0"),
    ("sdg.llm.query_type_counts={multi_hop: 1000000, structural: -999993}", "sdg.llm.query_type_counts"),
    ("export.tensorrt_max_shape=[64, 1000000000]", "export.tensorrt_max_shape: every batch and sequence"),
    ("validate.min_query_chars=3000", "min_query_chars (3000) is above max_query_chars"),
    ("evaluate.primary_metric=ndcg@7", "evaluate.primary_metric uses k=7"),
    ("evaluate.primary_metric=accuracy", "evaluate.primary_metric 'accuracy' must look like 'ndcg@10'"),
])
def test_absurd_values_fail_at_load_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field in str(err.value) and "\n" not in str(err.value)


def test_absurd_values_in_a_yaml_file_fail_at_load(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  batch_size: 1.0e+18\n")  # an int MLflow, torch and the batcher would all choke on
    with pytest.raises(ConfigError, match=r"in .*c\.yaml: train\.batch_size: Input should be less than or equal to 65536"):
        load_config(f)


@pytest.mark.parametrize("override, field", [
    ("triton.model_name=..", "triton.model_name: '..' is not a Triton model name"),
    ("triton.model_name=.", "triton.model_name: '.' is not a Triton model name"),
    ("triton.model_name=../../etc", "triton.model_name"), ("triton.model_name=.hidden", "triton.model_name"),
    ("register.model_name=../../x y", "register.model_name: '../../x y' is not a registered model name"),
    ("register.model_name=team/model", "register.model_name"), ("register.model_name=a:b", "register.model_name"),
    ("gate.alias=latest", "gate.alias: 'latest' is reserved by MLflow"), ("gate.alias=v3", "gate.alias"),
    ("gate.alias=../champion", "gate.alias"), ("register.experiment=two\nlines", "register.experiment"),
    ("train.trainjob.namespace=Team_A", "train.trainjob.namespace"), ("train.trainjob.shared_pvc=../pvc", "train.trainjob.shared_pvc"),
    ("train.trainjob.memory_per_node=lots", "train.trainjob.memory_per_node"),
    ("train.trainjob.shared_mount=data", "train.trainjob.shared_mount"),
    ("sdg.llm.base_url=ftp://host/v1", "sdg.llm.base_url: 'ftp://host/v1' must be an http:// or https:// URL"),
    ("sdg.llm.base_url_env=1BAD", "sdg.llm.base_url_env"),
    ("triton.server_url=triton:8000", "triton.server_url: 'triton:8000' must be an http:// or https:// URL"),
    ("triton.replica_urls=[http://a:8000, 'b:8000']", "triton.replica_urls: 'b:8000' must be an http://"),
])
def test_names_that_become_paths_or_registry_names_fail_at_load(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field in str(err.value) and "\n" not in str(err.value)


def test_good_names_pass():
    cfg = load_config(None, ["triton.model_name=my_embedder.v2", "register.model_name=catalog.schema.embedder-1",
                             "gate.alias=prod_champion", "register.experiment=/Users/me/embedforge runs",
                             "train.trainjob.namespace=team-a", "train.trainjob.cpu_per_node=7500m"])
    assert cfg.triton.model_name == "my_embedder.v2" and cfg.register_.model_name == "catalog.schema.embedder-1"


def test_a_config_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("train:\n  epochs: 2\nprompts:\n  query: 'requ\u00eate: '\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == (f"config file {f}:4: not UTF-8 text (byte 0xea at column 15): save it as UTF-8 "
                              "(e.g. iconv -f latin1 -t utf-8)")
    f.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 2\n")  # a BOM is fine
    assert load_config(f).train.epochs == 2


def test_url_credentials_move_to_the_environment(monkeypatch):
    from embedforge.config import LlmSdgConfig

    plain = LlmSdgConfig(base_url="http://127.0.0.1:8000/v1")
    assert plain.hide_url_credentials() == {} and plain.endpoint_url() == "http://127.0.0.1:8000/v1"
    cfg = LlmSdgConfig(base_url="https://u:pw-123456@h.example/v1?api_key=k-123456&api-version=2024")
    assert cfg.hide_url_credentials("MY_URL") == {"MY_URL": "https://u:pw-123456@h.example/v1?api_key=k-123456&api-version=2024"}
    assert cfg.base_url == "https://u:***@h.example/v1?api_key=***&api-version=2024" and cfg.base_url_env == "MY_URL"
    assert cfg.hide_url_credentials("MY_URL") == {}  # moved once
    monkeypatch.setenv("MY_URL", "https://u:pw-123456@h.example/v1?api_key=k-123456&api-version=2024")
    assert cfg.endpoint_url().startswith("https://u:pw-123456@")
    monkeypatch.setenv("MY_URL", "file:///etc/passwd")
    with pytest.raises(ConfigError, match=r"\$MY_URL \(sdg.llm.base_url_env\) must hold an http:// or https:// URL"):
        cfg.endpoint_url()
