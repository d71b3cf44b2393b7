#!/bin/sh
# qx-demo: the service of the Quantix demo product.
#   qx-demo            run: write the version to the status file, then wait for a signal
#   qx-demo --version  print the version
#   qx-demo --check    health check: exit 0 when the running service is this version
# State lives in $QX_DEMO_STATE, default <QX_ROOT>/data/lib/qx-demo (QX_ROOT is set by the
# agent and the demo's service manager on a sandboxed host; empty on a real one).
VERSION="@VERSION@"
STATE_DIR="${QX_DEMO_STATE:-${QX_ROOT:-}/data/lib/qx-demo}"
case "${1:-run}" in
  --version)
    echo "qx-demo ${VERSION}"
    ;;
  --check)
    running="$(cat "${STATE_DIR}/running-version" 2>/dev/null || true)"
    if [ "${running}" = "${VERSION}" ]; then
      echo "qx-demo ${VERSION} is running"
    else
      echo "qx-demo: installed ${VERSION}, running '${running}'" >&2
      exit 1
    fi
    ;;
  run)
    mkdir -p "${STATE_DIR}"
    echo "${VERSION}" > "${STATE_DIR}/running-version"
    echo "$$" > "${STATE_DIR}/ready.pid"
    echo "qx-demo ${VERSION} started (pid $$)"
    # On TERM the pending sleep is killed too: nothing of the program outlives it.
    trap 'echo "qx-demo ${VERSION} stopping"; kill $! 2>/dev/null; exit 0' TERM INT
    while :; do sleep 60 & wait $!; done
    ;;
  *)
    echo "usage: qx-demo [run|--version|--check]" >&2
    exit 2
    ;;
esac
