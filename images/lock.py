"""Pin each image's requirement set: resolve it with pip and write, or check, images/constraints-<variant>.txt.

The CPU image installs ``.[cpu,documents]`` (faiss-cpu) with the CPU build of torch; the GPU image installs
``.[gpu,documents]`` (faiss-gpu-cu12) with PyPI's CUDA build of torch; ``documents`` is the PDF/DOCX/PPTX readers.
pip resolves each set (``pip install --dry-run --report``, nothing installed) and every distribution it would
install is pinned, so the Dockerfile's ``pip install -c images/constraints-<variant>.txt ".[<variant>,documents]"``
and CI's ``make install`` get exactly these
versions. ``--check`` resolves again *under* the constraints and fails if the result is not exactly the pinned set
(a dependency the lock does not cover, or an edit to pyproject.toml that the lock has not seen).

Where the packages come from matters: PyPI's ``torch==2.13.0`` is the CUDA build, the CPU build ``2.13.0+cpu``
lives on the PyTorch CPU index (``--extra-index-url https://download.pytorch.org/whl/cpu``, as the Dockerfile
uses). So the GPU set is resolved against PyPI alone (no pip configuration files, no find-links: a local
``+cpu`` wheel would otherwise win), and the CPU set with the ambient pip configuration, which must offer
``torch==2.13.0+cpu`` (set ``PIP_EXTRA_INDEX_URL`` to the PyTorch CPU index where it does not).

    python images/lock.py            # rewrite both constraints files
    python images/lock.py --check    # exit 1 when a resolution differs from its constraints file
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
#: The image's Python (images/Dockerfile BASE): pip resolves markers and wheels for the interpreter it runs under.
PYTHON_VERSION = (3, 11)
#: variant -> (the extras: the one that picks the FAISS build and `documents`, the PDF/DOCX/PPTX readers; the torch
#: requirement; the PyTorch index the Dockerfile adds)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "cpu": ("cpu,documents", f"torch=={TORCH_VERSION}+cpu", "https://download.pytorch.org/whl/cpu"),
    "gpu": ("gpu,documents", f"torch=={TORCH_VERSION}", ""),
}
#: The project itself is installed from the build context, never pinned.
SELF = "embedforge"


def constraints_path(variant: str) -> Path:
    return REPO / "images" / f"constraints-{variant}.txt"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Faiss_CPU`` -> ``faiss-cpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_env(variant: str) -> dict[str, str]:
    """The environment pip resolves a variant in (see the module docstring for why the GPU set sees PyPI only)."""
    env = dict(os.environ)
    if variant == "gpu":
        for key in [k for k in env if k.startswith("PIP_") and k != "PIP_CERT" and k != "PIP_DEFAULT_TIMEOUT"]:
            del env[key]
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def resolve(variant: str, constraints: Path | None = None, python: str = sys.executable) -> dict[str, str]:
    """Return ``{distribution: version}`` of everything pip would install for the variant's image (not the project).

    ``--ignore-installed`` makes it the full set a fresh image installs, whatever the current environment has.
    """
    extra, torch_req, _ = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), f"{REPO}[{extra}]", torch_req]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        r = subprocess.run(cmd, env=pip_env(variant), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pip could not resolve the {variant} image's requirements:\n{r.stderr[-4000:]}")
        installs = json.loads(report.read_text())["install"]
    pins = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    pins.pop(SELF, None)
    return dict(sorted(pins.items()))


def read_constraints(path: Path) -> dict[str, str]:
    """Parse a ``name==version`` constraints file (comments and blank lines ignored)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def write_constraints(variant: str, pins: dict[str, str]) -> Path:
    path = constraints_path(variant)
    header = (f"# The {variant.upper()} image's full requirement set, resolved by `python images/lock.py` "
              f"(pip install --dry-run --report {REPO.name}[{VARIANTS[variant][0]}] {VARIANTS[variant][1]}).\n"
              "# Do not edit by hand: re-run the script; tests/install/test_images.py checks it is complete and current.\n")
    path.write_text(header + "".join(f"{name}=={version}\n" for name, version in pins.items()))
    return path


def diff(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """Human-readable differences between a constraints file (want) and a resolution (got)."""
    lines = [f"{n}: pinned {want[n]}, resolved {got[n]}" for n in want.keys() & got.keys() if want[n] != got[n]]
    lines += [f"{n}=={got[n]} is installed but not pinned" for n in got.keys() - want.keys()]
    lines += [f"{n}=={want[n]} is pinned but no longer installed" for n in want.keys() - got.keys()]
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify the constraints files instead of rewriting them")
    ap.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    args = ap.parse_args(argv)
    if sys.version_info[:2] != PYTHON_VERSION:
        ap.error(f"run under Python {'.'.join(map(str, PYTHON_VERSION))} (the images' Python), not {sys.version.split()[0]}")
    if unknown := set(args.variants) - set(VARIANTS):
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}: choose from {', '.join(VARIANTS)}")
    failed = False
    for variant in args.variants or list(VARIANTS):
        path = constraints_path(variant)
        if args.check:
            problems = diff(read_constraints(path), resolve(variant, constraints=path))
            for p in problems:
                print(f"{path.name}: {p}", file=sys.stderr)
            failed |= bool(problems)
        else:
            print(f"wrote {write_constraints(variant, resolve(variant))}")
    if failed:
        print("re-run `python images/lock.py` and commit the constraints files", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
