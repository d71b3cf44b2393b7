#!/bin/sh
# The demo host's service manager: `service.sh ROOT restart|stop|pid SERVICE`.
# The agent calls it through `service_manager: command` (restart_command). A service SERVICE
# runs ROOT/data/bin/SERVICE in its own session with QX_ROOT=ROOT; it is ready when it has
# written its pid to ROOT/data/lib/SERVICE/ready.pid. The pid goes to ROOT/run/SERVICE.pid.
set -u
root="$1"; action="$2"; svc="$3"
pidfile="$root/run/$svc.pid"
ready="$root/data/lib/$svc/ready.pid"
exe="$root/data/bin/$svc"
stop() {
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
    rm -f "$pidfile"
}
start() {
    [ -x "$exe" ] || { echo "$svc: $exe is not executable" >&2; exit 4; }
    mkdir -p "$root/run" "$(dirname "$ready")"
    rm -f "$ready"
    QX_ROOT="$root" setsid "$exe" </dev/null >>"$root/var/log/$svc.log" 2>&1 &
    pid=$!
    i=0
    while [ "$(cat "$ready" 2>/dev/null)" != "$pid" ] && [ $i -lt 500 ]; do
        kill -0 "$pid" 2>/dev/null || { echo "$svc: exited at start" >&2; exit 5; }
        sleep 0.02; i=$((i+1))
    done
    [ "$(cat "$ready" 2>/dev/null)" = "$pid" ] || { echo "$svc: not ready after 10 s" >&2; exit 5; }
    echo "$pid" > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
}
case "$action" in
    restart) stop; start ;;
    stop) stop ;;
    pid) cat "$pidfile" ;;
    *) echo "usage: service.sh ROOT restart|stop|pid SERVICE" >&2; exit 2 ;;
esac
