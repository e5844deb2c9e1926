"""Validates rendered custom resources against their upstream CRDs (schema and CEL rules), strictly.

Run with the project venv (jsonschema and cel are dev dependencies):
    .venv/bin/python helm/tools/validate_custom_resources.py [--crds DIR] RENDERED.yaml [...]
DIR defaults to $SWITCHYARD_CRDS_DIR, else ../shared/k8s-crds beside the repository (its README
lists each CRD's project and release). Prints one JSON object {"validated": {kind: count},
"skipped_builtin": n, "errors": [...]} and exits 1 on any error.

What the API server would say at `kubectl apply --validate=strict`, as far as the CRD alone can
tell: unknown fields, wrong types, enum/pattern/range violations, missing required fields, an
unknown kind or version, a deprecated or unserved version, and the CRD's CEL rules
(`x-kubernetes-validations`, evaluated with the `cel` library on the resource after the schema's
defaults are applied, as the API server does). The CRD dialect is translated as the CRDs' README
says: `nullable` allows null, `x-kubernetes-int-or-string` is integer or string,
`x-kubernetes-preserve-unknown-fields` and `x-kubernetes-embedded-resource` allow what they say,
`x-kubernetes-list-type: set|map` items must be unique (by `x-kubernetes-list-map-keys`). Not
checked: transition rules (those with `oldSelf`: they compare with the stored object on update),
`format`, CEL cost limits, and anything a controller decides (references that resolve, policies
that are accepted, listeners that are programmed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel
import jsonschema
import yaml
from jsonschema import validators

REPO = Path(__file__).resolve().parents[2]
CRDS_ENV = "SWITCHYARD_CRDS_DIR"
DEFAULT_CRDS_DIR = REPO.parent / "shared" / "k8s-crds"
# Gateway API ships two channels of the same CRDs; the experimental ones are supersets, so the
# standard channel is the stricter check (and all the chart needs).
GATEWAY_API_CHANNEL = "standard"
# API groups served by Kubernetes itself (kubernetes-validate checks those kinds).
BUILTIN_GROUPS = {"", "apps", "autoscaling", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
                  "storage.k8s.io", "apiextensions.k8s.io", "admissionregistration.k8s.io", "coordination.k8s.io",
                  "discovery.k8s.io", "scheduling.k8s.io", "node.k8s.io", "certificates.k8s.io"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The CRD schema leaves `metadata` to the API server's ObjectMeta; these are the fields a manifest
# may set (the rest are written by the server), so a misspelled `labels` fails here too.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}


class CrdCatalogError(RuntimeError):
    """The CRD folder is missing or holds two CRDs for one group and kind."""


@dataclass(frozen=True)
class CrdVersion:
    """One version of one CRD (served or not), with where it came from."""

    group: str
    kind: str
    version: str
    source: Path
    schema: dict[str, Any]
    served: bool
    deprecated: bool
    deprecation_warning: str | None
    storage_version: str


@dataclass(frozen=True)
class SchemaError:
    """A field of a resource that its CRD rejects: `path` is dotted (`spec.rules[0].matches`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


class ResourceRejected(ValueError):
    """A resource that the API server would refuse: unknown kind/version, deprecated, or schema errors."""

    def __init__(self, where: str, errors: list[SchemaError]) -> None:
        self.where = where
        self.errors = errors
        super().__init__(f"{where}: " + "; ".join(str(e) for e in errors))


def json_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# ---- the CRD dialect as JSON Schema draft 4 --------------------------------------------------------

def structural_to_draft4(node: dict[str, Any], structural: bool = True) -> dict[str, Any]:
    """A CRD structural schema node as strict draft-4 JSON Schema.

    `structural` is False inside allOf/anyOf/oneOf/not: there the schema only adds value rules to
    fields declared beside it, so "no other fields" must not be added there.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: structural_to_draft4(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = structural_to_draft4(value, structural and key != "not")
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_draft4(branch, False) for branch in value]
        elif key not in ("description", "default", "example", "format", "x-kubernetes-validations"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
        if out.get("anyOf") == [{"type": "integer"}, {"type": "string"}]:
            del out["anyOf"]  # the same statement again; one error message is enough
    if node.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if node.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                                 "metadata": {"type": "object"}})
    is_object = out.get("type") == "object" or "properties" in out
    if (structural and is_object and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        # As the API server prunes (and strict validation reports) fields that no schema declares.
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: str, instance: Any,
               schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "array") or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: dict[Any, int] = {}
    for index, item in enumerate(instance):
        identity = (tuple(item.get(k) for k in keys) if list_type == "map" and isinstance(item, dict)
                    else json.dumps(item, sort_keys=True))
        if identity in seen:
            what = f"key {dict(zip(keys, identity))}" if list_type == "map" else "value"
            yield jsonschema.ValidationError(
                f"duplicate {what} (item {index} repeats item {seen[identity]}; x-kubernetes-list-type: {list_type})")
        seen.setdefault(identity, index)


CrdValidator = validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})


def _errors(validator: Any, doc: dict[str, Any]) -> list[SchemaError]:
    found = []
    for error in validator.iter_errors(doc):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and error.validator_value is False:
            # Name each unknown field by its own path, as kubectl does ('unknown field "spec.x"').
            known = error.schema.get("properties", {})
            for name in sorted(set(error.instance) - set(known)):
                found.append(SchemaError(json_path([*path, name]), "unknown field"))
            continue
        found.append(SchemaError(json_path(path), error.message))
    return sorted(found, key=lambda e: e.path)


# ---- defaults and CEL rules ------------------------------------------------------------------------

def apply_defaults(schema: dict[str, Any], instance: Any) -> None:
    """The schema's `default`s filled into `instance` where a field is missing, as the API server does
    before it evaluates the CEL rules (a rule may read a field that only its default sets)."""
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        for name, child in properties.items():
            if name not in instance and "default" in child:
                instance[name] = copy.deepcopy(child["default"])
            if name in instance:
                apply_defaults(child, instance[name])
        if isinstance(schema.get("additionalProperties"), dict):
            for name, value in instance.items():
                if name not in properties:
                    apply_defaults(schema["additionalProperties"], value)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            apply_defaults(schema["items"], item)


class CelRules:
    """The CRDs' `x-kubernetes-validations`, compiled once each, evaluated at every field present."""

    def __init__(self) -> None:
        self._programs: dict[str, Any] = {}

    def errors(self, schema: dict[str, Any], instance: Any, path: list[str | int]) -> Iterator[SchemaError]:
        for rule in schema.get("x-kubernetes-validations", []):
            expression = rule["rule"]
            if "oldSelf" in expression:
                continue  # a transition rule: it compares with the stored object, on update only
            where = json_path(path) + rule.get("fieldPath", "")
            try:
                if expression not in self._programs:
                    self._programs[expression] = cel.compile(expression)
                passed = self._programs[expression].execute({"self": instance}) is True
                failure = rule.get("message") or f"failed rule: {expression}"
            except KeyError as exc:  # the API server's "no such key": the rule fails
                passed, failure = False, f"failed rule: {expression} (no such key {exc})"
            except (RuntimeError, ValueError, TypeError) as exc:
                passed, failure = False, f"CEL rule not evaluable offline ({exc}): {expression}"
            if not passed:
                yield SchemaError(where, failure)
        if isinstance(instance, dict):
            properties = schema.get("properties", {})
            for name, value in instance.items():
                child = properties.get(name, schema.get("additionalProperties"))
                if isinstance(child, dict):
                    yield from self.errors(child, value, [*path, name])
        elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(instance):
                yield from self.errors(schema["items"], item, [*path, index])


# ---- the catalog -----------------------------------------------------------------------------------

def crds_dir(explicit: Path | None = None) -> Path:
    """Where the upstream CRDs are: an explicit folder, else $SWITCHYARD_CRDS_DIR, else ../shared/k8s-crds."""
    return explicit or (Path(os.environ[CRDS_ENV]) if os.environ.get(CRDS_ENV) else DEFAULT_CRDS_DIR)


class CrdCatalog:
    """The CRDs of a folder, found by group, version and kind, with a strict validator per version."""

    def __init__(self, versions: dict[tuple[str, str], dict[str, CrdVersion]]) -> None:
        self._versions = versions
        self._validators: dict[tuple[str, str, str], Any] = {}
        self._rules = CelRules()

    @classmethod
    def load(cls, folder: Path) -> CrdCatalog:
        if not folder.is_dir():
            raise CrdCatalogError(
                f"no CRD folder at {folder}: put the upstream CRDs there (the shared k8s-crds folder) "
                f"or point ${CRDS_ENV} at it")
        versions: dict[tuple[str, str], dict[str, CrdVersion]] = {}
        sources: dict[tuple[str, str], Path] = {}
        other_channels = {"standard", "experimental"} - {GATEWAY_API_CHANNEL}
        for path in sorted(folder.rglob("*.yaml")):
            if other_channels & set(path.relative_to(folder).parts):
                continue
            for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                key = (spec["group"], spec["names"]["kind"])
                if key in sources:
                    raise CrdCatalogError(f"{key[1]}.{key[0]} is defined twice: {sources[key]} and {path}")
                sources[key] = path
                storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
                versions[key] = {
                    v["name"]: CrdVersion(
                        group=key[0], kind=key[1], version=v["name"], source=path,
                        schema=v["schema"]["openAPIV3Schema"], served=v.get("served", True),
                        deprecated=v.get("deprecated", False), deprecation_warning=v.get("deprecationWarning"),
                        storage_version=storage)
                    for v in spec["versions"]
                }
        if not versions:
            raise CrdCatalogError(f"{folder} holds no CustomResourceDefinition")
        return cls(versions)

    def __len__(self) -> int:
        return len(self._versions)

    def crd_version(self, api_version: str, kind: str) -> CrdVersion:
        """The CRD version a resource names; raises ResourceRejected when none is served or it is deprecated."""
        group, _, version = api_version.rpartition("/")
        where = f"{kind} {api_version}"
        crd = self._versions.get((group, kind))
        if crd is None:
            known = sorted(k for g, k in self._versions if g == group)
            hint = f" (CRDs of {group}: {', '.join(known)})" if known else f" (no CRD of group {group!r})"
            raise ResourceRejected(where, [SchemaError("kind", f"unknown kind {kind!r}{hint}")])
        found = crd.get(version)
        if found is None or not found.served:
            served = sorted(v for v, c in crd.items() if c.served)
            state = "not served" if found else "unknown"
            source = crd[served[0]].source.name
            raise ResourceRejected(where, [SchemaError(
                "apiVersion", f"{state} version {version!r} of {kind}; served: {', '.join(served)} ({source})")])
        if found.deprecated:
            warning = found.deprecation_warning or f"{api_version} {kind} is deprecated"
            raise ResourceRejected(where, [SchemaError(
                "apiVersion", f"deprecated: {warning} (storage version {group}/{found.storage_version})")])
        return found

    def validator(self, api_version: str, kind: str) -> Any:
        crd = self.crd_version(api_version, kind)
        key = (crd.group, crd.version, crd.kind)
        if key not in self._validators:
            schema = structural_to_draft4(copy.deepcopy(crd.schema))
            schema.setdefault("properties", {})["metadata"] = OBJECT_META
            schema["properties"]["apiVersion"] = {"enum": [api_version]}
            schema["properties"]["kind"] = {"enum": [kind]}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            self._validators[key] = CrdValidator(schema)
        return self._validators[key]

    def validate(self, doc: dict[str, Any]) -> CrdVersion:
        """Checks one custom resource; returns the CRD version it matched or raises ResourceRejected."""
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        where = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"
        try:
            validator = self.validator(api_version, kind)
        except ResourceRejected as exc:
            raise ResourceRejected(where, exc.errors) from None
        crd = self.crd_version(api_version, kind)
        errors = _errors(validator, doc)
        if not errors:  # rules assume the schema holds (types, required fields)
            defaulted = copy.deepcopy(doc)
            apply_defaults(crd.schema, defaulted)
            errors = sorted(self._rules.errors(crd.schema, defaulted, []), key=lambda e: e.path)
        if errors:
            raise ResourceRejected(where, errors)
        return crd


def is_builtin(doc: dict[str, Any]) -> bool:
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return group in BUILTIN_GROUPS


def validate_files(catalog: CrdCatalog, paths: list[Path]) -> dict[str, Any]:
    validated: Counter[str] = Counter()
    builtin = 0
    errors: list[str] = []
    for path in paths:
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not doc:
                continue
            if is_builtin(doc):
                builtin += 1
                continue
            try:
                crd = catalog.validate(doc)
            except ResourceRejected as exc:
                errors += [f"{path.name}: {exc.where}: {e}" for e in exc.errors]
                continue
            validated[f"{crd.kind} {crd.group}/{crd.version}"] += 1
    return {"validated": dict(validated), "skipped_builtin": builtin, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--crds", type=Path, help=f"CRD folder (default ${CRDS_ENV} or {DEFAULT_CRDS_DIR})")
    args = parser.parse_args()
    try:
        catalog = CrdCatalog.load(crds_dir(args.crds))
    except CrdCatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = validate_files(catalog, args.files)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
