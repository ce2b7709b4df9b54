#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest. Tests that need ../shared read HUBZOO_SHARED (.ci/run sets
# it); outside CI they skip with that reason. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
export TOKENIZERS_PARALLELISM=false
exec "$root/.venv/bin/python" -m pytest "$@"
