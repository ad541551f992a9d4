#!/usr/bin/env bash
# Run a command (the test suite) with the real services the tests need: installs Debian's
# PostgreSQL, Chromium and tcmalloc when missing (as root, from apt), starts a throwaway PostgreSQL
# unless SERATIO_TEST_POSTGRES_URL already names one, and exports its URL. `make test` runs this,
# so the Quickstart's `make test` passes on a fresh machine, not only under .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
packages="postgresql chromium libgoogle-perftools4"
if ! dpkg -s $packages >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "the tests need the Debian packages: $packages; install them (as root: apt-get install $packages)" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $packages
fi
if [ -z "${SERATIO_TEST_POSTGRES_URL:-}" ]; then
  SERATIO_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"
  export SERATIO_TEST_POSTGRES_URL
fi
echo "PostgreSQL for tests: $SERATIO_TEST_POSTGRES_URL"
exec "$@"
