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
# Base images are built FROM a digest: a base given by tag (BASE=, or the Dockerfile's default) is pulled and
# replaced by its registry digest (repo@sha256:...), so a tag moved upstream cannot change a rebuild silently; a
# local-only base (images/base.sh) has no registry digest and is used by name. Every image records its base in the
# OCI labels org.opencontainers.image.base.name (the reference built FROM) and .base.digest (the base's image ID).
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

resolve_base() {  # resolve_base REF: REF by registry digest where the registry knows one, else REF
  case "$1" in *@sha256:*) echo "$1"; return ;; esac
  $DOCKER image inspect "$1" >/dev/null 2>&1 || $DOCKER pull -q "$1" >/dev/null 2>&1 || true
  digest="$($DOCKER image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" 2>/dev/null | head -n1)"
  echo "${digest:-$1}"
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
  base="$(resolve_base "${BASE:-$(sed -n 's/^ARG BASE=//p' "$CTX/$file" | head -n1)}")"
  base_id="$($DOCKER image inspect --format '{{.Id}}' "$base" 2>/dev/null || echo unknown)"
  # shellcheck disable=SC2086  # args is empty or one option pair
  $DOCKER build --network host -f "$CTX/$file" --build-arg BASE="$base" $args \
    --label org.opencontainers.image.base.name="$base" --label org.opencontainers.image.base.digest="$base_id" \
    -t "$name" "$CTX" >&2
  if [ -n "${PUSH:-}" ]; then
    $DOCKER push "$name" >&2
    $DOCKER inspect --format '{{index .RepoDigests 0}}' "$name"
  else
    echo "$name"
  fi
done
