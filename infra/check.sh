#!/usr/bin/env bash
# checkov over the Bicep (infra/) and the Dockerfile, offline; fails on a failed check and on a
# file checkov could not parse (it would otherwise pass unchecked). checkov lives in its own
# virtualenv, .venv-checkov, at a pinned version, so its dependencies never touch requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION=3.3.30
VENV=.venv-checkov
if [ "$("$VENV/bin/checkov" --version 2>/dev/null || true)" != "$CHECKOV_VERSION" ]; then
  rm -rf "$VENV"
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  # The machine's pip may name local wheel folders that do not exist; those warnings are noise.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
    2> >(grep -v "^WARNING: Location" >&2)
fi
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
status=0
"$VENV/bin/checkov" --config-file infra/.checkov.yaml -d infra --framework bicep \
  -o cli -o json --output-file-path "console,$report/bicep.json" || status=$?
"$VENV/bin/checkov" --config-file infra/.checkov.yaml -f Dockerfile --framework dockerfile \
  -o cli -o json --output-file-path "console,$report/dockerfile.json" || status=$?
# Every Bicep file parsed, and the Dockerfile checked at all.
"$VENV/bin/python" - "$report" <<'PY' || status=1
import json, pathlib, sys

report = pathlib.Path(sys.argv[1])
bicep = json.loads((report / "bicep.json").read_text())["summary"]
docker = json.loads((report / "dockerfile.json").read_text())["summary"]
files = sorted(pathlib.Path("infra").rglob("*.bicep"))
print(f"checkov: bicep {bicep} over {len(files)} files; dockerfile {docker}")
if bicep["parsing_errors"] or docker["parsing_errors"]:
    sys.exit("checkov could not parse a file: simplify the construct (see LOG_LEVEL=DEBUG)")
if not docker["passed"]:
    sys.exit("checkov checked nothing in the Dockerfile")
PY
exit "$status"
