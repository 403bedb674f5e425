#!/usr/bin/env bash
# Architecture contracts ([tool.importlinter] in pyproject.toml) with import-linter. The repository's folders
# (server/, kernels/, clients/) become `unmask.*` only when installed, so the check reads a throwaway
# installed copy of the checkout; `tests` is read from the checkout itself.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
pip install -q --no-deps --target "$copy" "$root" >/dev/null
cd "$copy"  # lint-imports puts the working directory first on the path: keep the checkout's unmask/ off it
PYTHONPATH="$copy:$root" lint-imports --config "$root/pyproject.toml"
