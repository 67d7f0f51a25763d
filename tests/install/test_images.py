"""The container images' install recipe, checked without a container engine.

- pip resolves each image's requirement set (``images/lock.py``: ``pip install --dry-run --report``, against the
  real package index) under its constraints file: the result is exactly the pinned set, the GPU set holds
  faiss-gpu and no faiss-cpu, the CPU set faiss-cpu and no faiss-gpu;
- (slow) images/install.sh installs the CPU set into a fresh venv and images/check.py exercises it there;
- ``embedforge compile --image`` puts one image on every step of the compiled pipeline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from embedforge.pipelines.pipeline import STAGES

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DIGEST = "registry.example.com/ml/embedforge@sha256:" + "ab" * 32


def _lock_module():
    spec = importlib.util.spec_from_file_location("embedforge_images_lock", IMAGES / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _lock_module()


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def resolved(request) -> tuple[str, dict[str, str]]:
    """(variant, what pip would install for that image under its constraints file)."""
    variant = request.param
    return variant, lock.resolve(variant, constraints=lock.constraints_path(variant))


def test_resolution_is_exactly_the_pinned_set(resolved):
    variant, got = resolved
    problems = lock.diff(lock.read_constraints(lock.constraints_path(variant)), got)
    assert not problems, f"images/constraints-{variant}.txt is stale (run `make lock`):\n" + "\n".join(problems)


def test_each_image_has_exactly_its_own_faiss_and_torch(resolved):
    variant, got = resolved
    faiss = sorted(n for n in got if n.startswith("faiss"))
    if variant == "gpu":
        assert faiss == ["faiss-gpu-cu12"], faiss
        assert not got["torch"].endswith("+cpu") and any(n.startswith("nvidia-cuda-runtime") for n in got)
    else:
        assert faiss == ["faiss-cpu"], faiss
        assert got["torch"].endswith("+cpu") and not any(n.startswith("nvidia-") for n in got)


def test_core_dependencies_choose_no_faiss():
    """faiss comes only from the `cpu`/`gpu` extras: a core faiss-cpu would ride into the GPU image."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("faiss")]
    assert project["optional-dependencies"]["cpu"] == ["faiss-cpu>=1.8"]
    assert [d.split(">")[0] for d in project["optional-dependencies"]["gpu"] if "faiss" in d] == ["faiss-gpu-cu12"]


def test_dockerfile_installs_with_the_tested_recipe_as_non_root():
    text = (IMAGES / "Dockerfile").read_text()
    steps = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    install = next(i for i, s in enumerate(steps) if "images/install.sh" in s and s.startswith("RUN"))
    user = next(i for i, s in enumerate(steps) if s.startswith("USER"))
    check = next(i for i, s in enumerate(steps) if "images/check.py" in s and s.startswith("RUN"))
    assert install < user < check, "install as root, then check as the runtime user"
    assert steps[user] == "USER ${UID}:${UID}" and "ARG UID=1000" in steps
    assert not [s for s in steps if "|| true" in s], "a failing step must fail the build"
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for path in src.replace("${VARIANT}", "cpu").split():
            if path.startswith("--from="):  # from the build stage, not the context
                break
            assert (REPO / path).exists(), f"images/Dockerfile copies {path}, which does not exist"
    # the final image takes the venv from the build stage: pip's CA bundle and extra wheels stay behind
    final = text[text.rindex("\nFROM "):]
    assert "COPY --from=build /opt/venv /opt/venv" in final and "images/extra" not in final


def test_install_script_rejects_an_unknown_variant():
    r = subprocess.run(["sh", str(IMAGES / "install.sh"), "cuda"], capture_output=True, text=True)
    assert r.returncode == 2 and "VARIANT must be cpu or gpu" in r.stderr


@pytest.mark.slow
def test_cpu_set_installs_in_a_fresh_venv_and_passes_the_build_check(tmp_path):
    """The image recipe end to end, minus the container: images/install.sh cpu, then images/check.py, as a user
    whose HOME and caches are fresh folders (the image's ENV, not this machine's)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHON": py, "TORCH_INDEX_URL": os.environ.get("EMBEDFORGE_TORCH_INDEX_URL", "")}
    r = subprocess.run(["sh", str(IMAGES / "install.sh"), "cpu", str(REPO)], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    home = tmp_path / "home"
    run_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1",
               "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / ".cache" / "huggingface"),
               "MPLCONFIGDIR": str(home / ".cache" / "matplotlib"), "TMPDIR": str(tmp_path)}
    r = subprocess.run([py, str(IMAGES / "check.py"), "--variant", "cpu"], env=run_env, capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "ok  faiss-cpu" in r.stdout and "ranks the matching passage first" in r.stdout


# ------------------------------------------------------------------------------- the image the pipeline pins
def _executor_images(path: Path) -> dict[str, str]:
    spec = next(yaml.safe_load_all(path.read_text()))  # the pipeline spec; the platform spec follows
    # importer executors (inputs as artifacts) have no container: the KFP launcher does the import
    return {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()
            if "importer" not in ex}


def test_compile_pins_every_step_to_the_given_image(tmp_path):
    out = tmp_path / "p.yaml"
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--output", str(out), "--image", DIGEST],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    images = _executor_images(out)
    # every stage, the report step and the "absent input" stand-ins run in the given image
    assert {f"exec-{stage}" for stage in STAGES} | {"exec-report"} <= set(images), images
    assert set(images.values()) == {DIGEST}, images
    assert "not pinned by digest" not in r.stderr


def test_compile_warns_when_the_image_is_a_tag(tmp_path):
    out = tmp_path / "p.yaml"
    r = subprocess.run([sys.executable, "-m", "embedforge.cli", "compile", "--output", str(out),
                        "--image", "registry.example.com/embedforge:latest"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "not pinned by digest" in " ".join(r.stderr.split())
    assert set(_executor_images(out).values()) == {"registry.example.com/embedforge:latest"}


def test_committed_pipeline_uses_the_gpu_image_by_default():
    from embedforge.cluster.image import BASE_IMAGE

    assert BASE_IMAGE.endswith("-gpu") or "EMBEDFORGE_IMAGE" in os.environ
    assert set(_executor_images(REPO / "pipelines" / "embedforge.yaml").values()) == {BASE_IMAGE}
