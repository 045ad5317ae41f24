#!/bin/sh
# The image's entrypoint: runs `joulebench ARGS` as the user who owns what the run writes.
#
# The container starts as root. Before anything else it steps down (setpriv) to the owner of the
# MLflow store when the store is local (the sqlite file or folder `mlflow run` mounts, or
# ./mlflow.db in a mounted working directory), else to the owner of the working directory. So
# `docker run -v "$PWD:$PWD" -w "$PWD" …` and `mlflow run .` write files that belong to whoever
# owns the project directory, whatever their UID (1000, 41237, or root), without `--user`; on a
# rootless engine the host user is root in the container and stays so. Started with `--user`,
# it runs as that user. A UID the image does not know gets HOME=/tmp (MLflow and matplotlib keep
# small files there) and USER set, which Python's getpass (MLflow's run owner) needs.
set -eu

store_path() {
    uri="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
    case "$uri" in
        sqlite:///*) printf '%s\n' "${uri#sqlite:///}" ;;
        file://*) printf '%s\n' "${uri#file://}" ;;
        file:*) printf '%s\n' "${uri#file:}" ;;
        *://*) printf '.\n' ;;  # a tracking server: only the working directory is written
        *) printf '%s\n' "$uri" ;;
    esac
}

owner_of_what_the_run_writes() {
    path=$(store_path)
    [ -e "$path" ] || path=$(dirname -- "$path")
    stat -c '%u:%g' -- "$path"
}

# Docker creates a bind mount's missing host directory as root, and `mlflow run` mounts the run's
# artifact directory before its sqlite store has made it: an empty one made so is handed to the owner.
hand_over_artifact_directory() {
    [ -n "${MLFLOW_RUN_ID:-}" ] || return 0
    while read -r _ _ _ _ mount_point _; do
        case "$mount_point" in
            */"$MLFLOW_RUN_ID"/artifacts)
                if [ "$(stat -c %u -- "$mount_point")" = 0 ] && [ -z "$(ls -A -- "$mount_point")" ]; then
                    chown -- "$1" "$mount_point"
                fi
                ;;
        esac
    done </proc/self/mountinfo
}

if [ "$(id -u)" = 0 ] && [ -z "${JOULEBENCH_STEPPED_DOWN:-}" ]; then
    owner=$(owner_of_what_the_run_writes)
    if [ "${owner%%:*}" != 0 ]; then
        hand_over_artifact_directory "$owner"
        export JOULEBENCH_STEPPED_DOWN=1
        exec setpriv --reuid="${owner%%:*}" --regid="${owner#*:}" --clear-groups "$0" "$@"
    fi
fi
if ! [ -w "${HOME:-/}" ]; then
    export HOME=/tmp
fi
USER=$(getent passwd "$(id -u)" | cut -d: -f1 || true)
export USER="${USER:-$(id -u)}" LOGNAME="${USER:-$(id -u)}"
case "${1:-}" in
    train | capacity | sweep)
        if ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
            echo "joulebench-entrypoint: this container sees no NVIDIA GPU (no /dev/nvidia*), so the run uses the CPU;" \
                "for a GPU pass --gpus all (mlflow run: -A gpus=all) on a host with the NVIDIA Container Toolkit" >&2
        fi
        ;;
esac
exec joulebench "$@"
