#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install hubzoo into it (editable, with dev extras).
# torch is pinned in the same pip command as everything that depends on it; otherwise pip resolves a CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.hubzoo-installed"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when the package metadata changed since the last install.
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
    "$venv/bin/pip" install -qq --disable-pip-version-check "torch==2.13.0" -e "$root[dev]"
    touch "$stamp"
fi
