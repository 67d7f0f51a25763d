"""Metric/param names per logging target (KFP run metrics, manifest counts)."""

import re

import pytest

from embedforge import names

KFP_NAME = re.compile(r"^[a-zA-Z]([-_a-zA-Z0-9]{0,62}[a-zA-Z0-9])?$")


@pytest.mark.parametrize("raw, want", [
    ("finetuned_ndcg@10", "finetuned_ndcg_at_10"), ("base_mrr@100", "base_mrr_at_100"), ("10x", "m_10x"),
    ("delta ndcg@5!", "delta_ndcg_at_5"), ("x" * 80, "x" * 64), ("@@", "at__at"),
])
def test_for_kfp(raw, want):
    assert names.for_kfp(raw) == want and KFP_NAME.match(want)


@pytest.mark.parametrize("raw, want", [("llm.qa.requests", "llm_qa_requests"), ("pairs file.jsonl", "pairs_file_jsonl"),
                                       ("__x__", "x")])
def test_for_count(raw, want):
    assert names.for_count(raw) == want


# ------------------------------------------------------------------------------------- names from the config
@pytest.mark.parametrize("good", ["embedforge_embedder", "emb", "my.embedder-2", "_private", "a" * 100])
def test_triton_model_name_accepts_folder_names(good):
    assert names.triton_model_name(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "-flag", "with space", "a" * 101,
                                 "naïve", "x\n"])
def test_triton_model_name_refuses_what_is_not_one_folder_of_the_repository(bad):
    with pytest.raises(ValueError, match="is not a Triton model name"):
        names.triton_model_name(bad)


@pytest.mark.parametrize("good", ["embedforge-embedder", "ef-test-0a1b2c", "catalog.schema.model", "Model_1"])
def test_registry_model_name_accepts(good):
    assert names.registry_model_name(good) == good


@pytest.mark.parametrize("bad", ["", "../../x y", "a/b", "a:b", "x y", "..", ".x", "x" * 201, "tab\there"])
def test_registry_model_name_refuses(bad):
    with pytest.raises(ValueError, match="is not a registered model name"):
        names.registry_model_name(bad)


@pytest.mark.parametrize("bad, why", [("latest", "reserved"), ("LATEST", "reserved"), ("v1", "reserved"),
                                      ("V12", "reserved"), ("", "not an MLflow alias"), ("a.b", "not an MLflow alias"),
                                      ("../x", "not an MLflow alias")])
def test_registry_alias_refuses_what_mlflow_refuses(bad, why):
    with pytest.raises(ValueError, match=why):
        names.registry_alias(bad)
    assert names.registry_alias("champion") == "champion" and names.registry_alias("v1-candidate") == "v1-candidate"


@pytest.mark.parametrize("fn, good, bad", [
    (names.k8s_label, ["team-a", "a", "x" * 63], ["Team", "-a", "a-", "a_b", "x" * 64, ""]),
    (names.k8s_name, ["embedforge-data", "torch-distributed", "a.b-c"], ["../pvc", "A", "a..b", "x" * 254]),
    (names.k8s_quantity, ["8", "7500m", "32Gi", "1.5", "2e3"], ["lots", "8 Gi", "-1", "Gi"]),
    (names.experiment_name, ["embedforge", "/Users/me/exp 1"], ["", " x", "a\nb", "x" * 501]),
])
def test_kubernetes_and_experiment_names(fn, good, bad):
    for value in good:
        assert fn(value) == value
    for value in bad:
        with pytest.raises(ValueError):
            fn(value)
