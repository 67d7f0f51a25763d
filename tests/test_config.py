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
    assert changed == {"sdg.max_pairs": 1000, "train.batch_size": 16} and cpu.sdg.max_pairs == 1000
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
    assert forced.train.epochs == 2.0 and set(changed) == {"sdg.max_pairs", "train.epochs", "train.batch_size"}
    byo, changed = PipelineConfig().resolved(cuda_available=False, pairs_given=True)  # the user's pairs: 1 epoch
    assert changed == {"train.epochs": 1.0, "train.batch_size": 16} and byo.sdg.max_pairs == PipelineConfig().sdg.max_pairs


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
