#!/usr/bin/env bash
# Build the Roost container images (one per role), or, where no container engine
# works, say so and print the image size ESTIMATES from docs/deploy.md.
#
#   scripts/images.sh              build with podman, docker or buildah (first that works)
#   scripts/images.sh --estimate   measure the estimates again (a throwaway venv per role,
#                                  `pip install -c constraints.txt '.[<role>]'`, non-editable)
#
# Environment: TAG (default: the version in pyproject.toml), REGISTRY (default localhost,
# the names k3s/base uses), PLATFORMS (default linux/arm64,linux/amd64), ENGINE (force
# one), PUSH=1 (docker: push to REGISTRY instead of writing OCI archives to build/images/,
# which `k3s ctr images import` takes; podman/buildah: a local manifest list per image,
# push it with `podman manifest push`).
set -euo pipefail
cd "$(dirname "$0")/.."

ROLES=(hub inference audit update personalization fleet)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
TAG=${TAG:-$VERSION}
REGISTRY=${REGISTRY:-localhost}
PLATFORMS=${PLATFORMS:-linux/arm64,linux/amd64}
# The final stage's base (see containers/*.Containerfile). Its size is not measured
# here (no engine): python:3.11-slim on Debian 13 is ~125 MB unpacked (debian:13-slim
# ~80 MB + CPython 3.11 ~45 MB), ~42-45 MB compressed; the estimates add 125 MB.
BASE_MB=125
# The personalization image takes torch's CPU-only wheels (no CUDA libraries).
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

engine_works() {
  case "$1" in
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
    podman) command -v podman >/dev/null && podman info >/dev/null 2>&1 ;;
    buildah) command -v buildah >/dev/null && buildah info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

build_with() {
  local engine=$1 role image
  for role in "${ROLES[@]}"; do
    image="$REGISTRY/roost-$role:$TAG"
    echo "images: building $image ($PLATFORMS) with $engine"
    case "$engine" in
      docker)
        # A multi-platform result cannot be loaded into docker's classic image store.
        if [ -n "${PUSH:-}" ]; then output=(--push); else
          mkdir -p build/images
          output=(--output "type=oci,dest=build/images/roost-$role-$TAG.oci.tar")
        fi
        docker buildx build --platform "$PLATFORMS" --build-arg "TORCH_INDEX=$TORCH_INDEX" \
          -f "containers/$role.Containerfile" -t "$image" "${output[@]}" . ;;
      podman)
        podman build --platform "$PLATFORMS" --build-arg "TORCH_INDEX=$TORCH_INDEX" \
          -f "containers/$role.Containerfile" --manifest "$image" . ;;
      buildah)
        buildah build --platform "$PLATFORMS" --build-arg "TORCH_INDEX=$TORCH_INDEX" \
          -f "containers/$role.Containerfile" --manifest "$image" . ;;
    esac
  done
}

# Size of the /opt/roost venv each image would carry, measured on this machine.
estimate() {
  local src role venv mb total
  WORK=$(mktemp -d /tmp/roost-image-estimate.XXXXXX)
  work=$WORK
  trap 'rm -rf "$WORK"' EXIT
  src="$work/src"
  mkdir -p "$src"
  # What the .dockerignore lets into the build context.
  cp -r pyproject.toml constraints.txt README.md services hub models protos fleet "$src/"
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  if [ -n "$TORCH_INDEX" ] && ! python3 -c "import urllib.request as u; u.urlopen('$TORCH_INDEX/', timeout=5)" 2>/dev/null; then
    echo "images: $TORCH_INDEX unreachable: torch comes from the default index (a +cpu wheel there" >&2
    echo "        if your pip config provides one; PyPI's x86-64 torch would add the CUDA libraries)" >&2
    TORCH_INDEX=""
  fi
  printf '| image | venv (MB) | + base (MB) | estimate (MB) |\n|---|---|---|---|\n'
  for role in "${ROLES[@]}"; do
    venv="$work/venv-$role"
    python3.11 -m venv "$venv"
    (
      cd "$src"
      extra=()
      if [ "$role" = personalization ] && [ -n "$TORCH_INDEX" ]; then extra=(--extra-index-url "$TORCH_INDEX"); fi
      "$venv/bin/pip" install -q --no-cache-dir "${extra[@]}" -c constraints.txt ".[$role]" \
        >"$work/$role.log" 2>&1 || { tail -n 20 "$work/$role.log" >&2; exit 1; }
      "$venv/bin/pip" uninstall -q -y pip >/dev/null 2>&1 || true
    )
    mb=$(du -sm "$venv" | cut -f1)
    total=$((mb + BASE_MB))
    printf '| roost-%s | %s | %s | ~%s |\n' "$role" "$mb" "$BASE_MB" "$total"
    rm -rf "$venv" "$src/build"
  done
}

print_estimates() {
  if grep -q '<!-- image-estimates -->' docs/deploy.md 2>/dev/null; then
    sed -n '/<!-- image-estimates -->/,/<!-- \/image-estimates -->/p' docs/deploy.md | grep '^|'
  else
    echo "(no estimates recorded yet: run scripts/images.sh --estimate)"
  fi
}

if [ "${1:-}" = "--estimate" ]; then
  estimate
  exit 0
fi

for engine in ${ENGINE:-podman docker buildah}; do
  if engine_works "$engine"; then
    build_with "$engine"
    exit 0
  fi
done

cat <<MSG
images: no working container engine here (tried: ${ENGINE:-podman docker buildah}).
  Nothing was built. The Containerfiles are containers/<role>.Containerfile; on a machine
  with an engine run this script again, or e.g.
    docker buildx build --platform $PLATFORMS -f containers/inference.Containerfile \\
      -t $REGISTRY/roost-inference:$TAG .
  Estimated image sizes (unpacked; measured venvs + an assumed ${BASE_MB} MB base, NOT
  measured images; docs/deploy.md explains; re-measure with scripts/images.sh --estimate):
MSG
print_estimates | sed 's/^/    /'
exit 0
