"""Validate Kubernetes manifests offline, failing on anything that cannot be checked.

    python deploy/tools/validate_k8s.py [--k8s-version 1.29 ...] FILE_OR_KUSTOMIZE_DIR...

* A directory is rendered first with `kubectl kustomize DIR` (or `kustomize build DIR`).
* Built-in kinds are validated with kubernetes-validate (PyPI; its JSON schemas are bundled in
  the wheel) in strict mode, so unknown fields are errors. Unlike the kubernetes-validate CLI,
  a kind without a schema is an error here, not a warning.
* LeaderWorkerSet (a CRD) is validated against deploy/schemas/leaderworkerset-v1.schema.json,
  whose pod templates point at kubernetes-validate's core/v1 PodTemplateSpec definition.

Exit status: 0 if every document of every input validated against every requested version.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"):
        HERE.parent / "schemas" / "leaderworkerset-v1.schema.json",
}
DEFAULT_VERSIONS = ("1.29", kv_utils.major_minor(kv_utils.latest_version()))


def render_kustomization(directory: Path) -> str:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    else:
        raise RuntimeError("neither kubectl nor kustomize is on PATH: cannot render " + str(directory))
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def load_documents(path: Path) -> list[dict]:
    text = render_kustomization(path) if path.is_dir() else path.read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _definitions(version: str) -> dict:
    version = kv_utils.major_minor(version)
    full = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) == version]
    if not full:
        raise RuntimeError(f"kubernetes-validate {kubernetes_validate.__version__} has no "
                           f"schemas for Kubernetes {version}")
    ref = files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{full[-1]}-local-strict/_definitions.json")
    return json.loads(ref.read_text())


def validate_crd(doc: dict, schema_path: Path, version: str) -> list[str]:
    schema = json.loads(schema_path.read_text())
    definitions = _definitions(version)
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))]


def validate_document(doc: dict, version: str) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        return validate_crd(doc, CRD_SCHEMAS[key], version)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema for {key[1]} {key[0]} (Kubernetes {version}): {e.message}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--k8s-version", action="append", dest="versions",
                        help=f"Kubernetes minor version(s) to check (default: {DEFAULT_VERSIONS})")
    args = parser.parse_args(argv)
    versions = [kv_utils.major_minor(v) for v in (args.versions or DEFAULT_VERSIONS)]

    failures = checked = 0
    for path in args.paths:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError, subprocess.CalledProcessError, RuntimeError) as e:
            detail = getattr(e, "stderr", "") or ""
            print(f"FAIL {path}: cannot load: {e} {detail}".rstrip())
            failures += 1
            continue
        if not docs:
            print(f"FAIL {path}: no Kubernetes documents")
            failures += 1
        for doc in docs:
            name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            for version in versions:
                checked += 1
                errors = validate_document(doc, version)
                for err in errors:
                    print(f"FAIL {path} {name} (k8s {version}): {err}")
                failures += bool(errors)
                if not errors:
                    print(f"ok   {path} {name} (k8s {version})")
    print(f"validate_k8s: {checked} checks, {failures} failures")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
