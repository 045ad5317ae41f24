#!/usr/bin/env bash
# podman's Docker-compatible API, what dockerd is on a Docker host (run as root):
#   deploy/podman/service.sh start    # once per boot; then `mlflow run` (docker-py) finds it
#   deploy/podman/service.sh stop
#   deploy/podman/service.sh status   # exit 0 while it runs, 3 when not (a pidfile left behind is not)
# It listens on /run/podman/podman.sock, linked from /run/docker.sock (docker-py's default), with
# the socket's group `docker`: users in that group reach the engine, as on a Docker host, by
# exporting CONTAINER_HOST=unix:///run/podman/podman.sock (deploy/podman/docker, `docker` here, then talks to it).
set -euo pipefail

SOCKET=/run/podman/podman.sock
PIDFILE=/run/podman/joulebench-service.pid
LOG=/run/podman/joulebench-service.log

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
    start)
        if running; then
            exit 0
        fi
        mkdir -p /run/podman
        rm -f "$SOCKET"
        # Its own session, so that stop ends it and its children together; never through another service.
        env -u CONTAINER_HOST setsid podman system service --time=0 "unix://$SOCKET" >"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        for _ in $(seq 150); do
            [[ -S $SOCKET ]] && break
            running || { echo "deploy/podman/service.sh: podman system service exited: $(tail -1 "$LOG")" >&2; exit 75; }
            sleep 0.2
        done
        [[ -S $SOCKET ]] || { echo "deploy/podman/service.sh: no socket at $SOCKET after 30 s" >&2; exit 75; }
        chgrp docker "$SOCKET" && chmod 0660 "$SOCKET"
        ln -sfn "$SOCKET" /run/docker.sock
        ;;
    stop)
        if running; then
            pid=$(cat "$PIDFILE")
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$PIDFILE" /run/docker.sock
        ;;
    status)
        running || exit 3
        ;;
    *)
        echo "usage: deploy/podman/service.sh start|stop|status" >&2
        exit 2
        ;;
esac
