#!/usr/bin/env bash
# Installs only what is missing, and is idempotent: a second run installs nothing.
#   1. Debian packages (root, or sudo for this step only)
#   2. the project venv (.venv) with pinned Python dependencies, every package editable
#   3. pinned npm packages of each Node part (npm ci from its lockfile)
# Each step keeps a stamp of the inputs it installed from and reruns only when they change.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# gcc + libc6-dev: the launcher compiles a 5-line shim once so Orthanc's HTTPS (civetweb 1.15)
# works with OpenSSL 3 (see services/stack/src/ztstack/templates/civetweb_openssl3.c).
# docker-compose (v1, Debian) and kubernetes-client (kubectl kustomize): the offline checks of
# compose/ and deploy/ (docs/deploy.md); neither needs a Docker engine or a cluster.
# postgresql: the server binaries for the PostgreSQL tests (a throwaway cluster per test session,
# tests/plugins/postgres.py), `make bench` and `make soak`; its own cluster is not used.
APT_PACKAGES=(orthanc orthanc-dicomweb dcmtk chromium iproute2 nodejs npm ca-certificates gcc libc6-dev
  nginx-light libnginx-mod-http-headers-more-filter
              docker-compose kubernetes-client postgresql)

say() { printf '[bootstrap] %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The image may ship node/npm or kubectl outside Debian's packages; accept those (installing
# kubernetes-client over another package's /usr/bin/kubectl would fail).
if command -v node >/dev/null && command -v npm >/dev/null; then
  keep=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || keep+=("$p"); done
  missing=("${keep[@]}")
fi
if command -v kubectl >/dev/null; then
  keep=(); for p in "${missing[@]}"; do [[ $p == kubernetes-client ]] || keep+=("$p"); done
  missing=("${keep[@]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

PY_INPUTS=(requirements/constraints.txt requirements/base.in services/*/pyproject.toml idp/client/pyproject.toml)
py_stamp=$(stamp_of "${PY_INPUTS[@]}")
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$py_stamp" ]; then
  say "installing Python dependencies into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c requirements/constraints.txt -r requirements/base.in
  editables=()
  for d in services/gateway services/stack services/emr idp/client; do
    [ -f "$d/pyproject.toml" ] && editables+=(-e "$d")
  done
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation "${editables[@]}"
  echo "$py_stamp" > "$VENV/.stamp"
fi

for d in idp/local idp/keycloak/typecheck viewer-config; do
  [ -f "$d/package-lock.json" ] || continue
  s=$(stamp_of "$d/package.json" "$d/package-lock.json")
  if [ "$(cat "$d/node_modules/.stamp" 2>/dev/null)" != "$s" ]; then
    say "installing npm packages in $d"
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$s" > "$d/node_modules/.stamp"
  fi
done
