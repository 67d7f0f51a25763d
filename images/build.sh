#!/bin/sh
# Build embedforge's images from a staged context: exactly the files each image needs, so the classic builder and
# BuildKit build the same thing and the context stays small (no .venv, runs/ or caches).
#   images/build.sh IMAGE...        IMAGE: cpu | gpu | mlflow | triton-local
# Environment:
#   BASE           base image of every image built (default: each Dockerfile's own; images/base.sh makes a local one)
#   REGISTRY, TAG  image names: $REGISTRY/embedforge:$TAG-cpu, -gpu, $REGISTRY/embedforge-mlflow:$TAG,
#                  $REGISTRY/embedforge-triton-local:$TAG (default ghcr.io/embedforge and pyproject's version)
#   WHEELS         a folder of wheels pip may install from (e.g. the CPU torch wheel where its index is unreachable;
#                  default: $PIP_FIND_LINKS when it is a folder)
#   PIP_CERT_FILE  the CA bundle pip needs to reach its index (default: $PIP_CERT, else pip's configured cert)
#   PUSH=1         push each image and print its digest (what `embedforge compile --image` wants)
#   DOCKER         the docker command (default docker)
# The build runs with --network host (pip and apt reach their indexes through this machine's network).
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
DOCKER="${DOCKER:-docker}"
REGISTRY="${REGISTRY:-ghcr.io/embedforge}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")}"
CERT="${PIP_CERT_FILE:-${PIP_CERT:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -n1)}}"
[ $# -gt 0 ] || { echo "usage: images/build.sh cpu|gpu|mlflow|triton-local ..." >&2; exit 2; }

stage() {  # stage CONTEXT: the files of the repository the images copy, plus images/extra/
  ctx="$1"
  mkdir -p "$ctx/images/extra"
  (cd "$REPO" && tar -cf - --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
      pyproject.toml README.md src components pipelines images/install.sh images/check.py images/constraints-cpu.txt \
      images/constraints-gpu.txt images/Dockerfile images/Dockerfile.mlflow images/Dockerfile.triton-local) \
    | tar -C "$ctx" -xf -
  if [ -n "$CERT" ] && [ -s "$CERT" ]; then cp "$CERT" "$ctx/images/extra/pip-ca.crt"; fi
  wheels="${WHEELS:-${PIP_FIND_LINKS:-}}"
  if [ -n "$wheels" ] && [ -d "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
    mkdir -p "$ctx/images/extra/wheels" && cp "$wheels"/*.whl "$ctx/images/extra/wheels/"
  fi
}

CTX="$(mktemp -d "${TMPDIR:-/tmp}/embedforge-image.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
stage "$CTX"
for image in "$@"; do
  case "$image" in
    cpu|gpu) file=images/Dockerfile; name="$REGISTRY/embedforge:$TAG-$image"; args="--build-arg VARIANT=$image" ;;
    mlflow) file=images/Dockerfile.mlflow; name="$REGISTRY/embedforge-mlflow:$TAG"; args="" ;;
    triton-local) file=images/Dockerfile.triton-local; name="$REGISTRY/embedforge-triton-local:$TAG"; args="" ;;
    *) echo "images/build.sh: unknown image '$image' (cpu, gpu, mlflow, triton-local)" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086  # args is empty or one option pair
  $DOCKER build --network host -f "$CTX/$file" ${BASE:+--build-arg BASE="$BASE"} $args -t "$name" "$CTX" >&2
  if [ -n "${PUSH:-}" ]; then
    $DOCKER push "$name" >&2
    $DOCKER inspect --format '{{index .RepoDigests 0}}' "$name"
  else
    echo "$name"
  fi
done
