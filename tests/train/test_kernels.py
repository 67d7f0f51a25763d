"""Fused kernels (:mod:`embedforge.stages.train.kernels`): where they apply, what ``train.kernels=liger`` says when
they cannot, and — on a CUDA device with liger-kernel — that a fused Llama gives the eager one's embeddings and
gradients and saves the same weights."""

from __future__ import annotations

import pytest
import torch

from embedforge.config import ModelConfig
from embedforge.errors import ConfigError


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from tiny_decoder import make_decoder

    return make_decoder(tmp_path_factory.mktemp("llama") / "m", "llama", hidden=64, layers=2)


def _load(folder, device: str):
    from embedforge.retrieval import loading as models

    return models.load(str(folder), ModelConfig(pooling="lasttoken"), device=device)


def test_auto_stays_eager_off_cuda_and_none_never_fuses(llama_folder):
    from embedforge.stages.train.kernels import fuse

    model = _load(llama_folder, "cpu")
    mlp = model.transformers_model.layers[0].mlp
    assert fuse(model, "auto", "cpu") == "none" and fuse(model, "none", "cuda:0") == "none"
    assert "forward" not in vars(mlp), "an eager model's modules keep their class's forward"


def test_liger_required_where_it_cannot_run_is_one_line(llama_folder, tmp_path):
    from embedforge.stages.train.kernels import fuse

    with pytest.raises(ConfigError) as err:
        fuse(_load(llama_folder, "cpu"), "liger", "cpu")
    msg = str(err.value)
    assert msg.startswith("train.kernels=liger: fused kernels need CUDA, the run is on cpu: set train.kernels=auto")
    assert "\n" not in msg


def test_the_setting_is_validated():
    from pydantic import ValidationError

    from embedforge.config import TrainConfig

    assert TrainConfig().kernels in ("auto", "none")
    with pytest.raises(ValidationError):
        TrainConfig(kernels="fast")


@pytest.mark.gpu
def test_fused_llama_matches_eager_on_cuda(llama_folder, tmp_path):
    pytest.importorskip("liger_kernel")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from embedforge.stages.train.kernels import fuse

    texts = ["a short text", "a much longer text about the yield statement in generators " * 8]

    def embed_and_grads(model):
        features = model.tokenize(texts)  # sentence-transformers 6 adds non-tensor entries (e.g. the texts' task)
        features = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emb = model(features)["sentence_embedding"].float()
        emb.sum().backward()
        grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        return emb.detach(), grads

    eager = _load(llama_folder, "cuda")
    ref, ref_grads = embed_and_grads(eager)
    fused = _load(llama_folder, "cuda")
    assert fuse(fused, "liger", "cuda:0") == "liger"
    assert "forward" in vars(fused.transformers_model.layers[0].mlp)
    emb, grads = embed_and_grads(fused)
    assert torch.nn.functional.cosine_similarity(emb, ref).min() > 0.999
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        cos = torch.nn.functional.cosine_similarity(g.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))
    assert fused.state_dict().keys() == eager.state_dict().keys()
    fused.save(str(tmp_path / "saved"))
    reloaded = _load(tmp_path / "saved", "cuda")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, fused.state_dict()[name]), name
