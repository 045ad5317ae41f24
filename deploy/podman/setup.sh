#!/usr/bin/env bash
# Makes this machine's podman the container engine behind `docker` and `mlflow run` (run as root;
# install.sh runs it). docs/containers.md, "Podman hosts", says what each setting answers:
# - engine settings (/etc/containers/containers.conf.d/50-joulebench.conf): runc, because crun
#   refuses hybrid cgroups; cgroupfs, because no systemd manages cgroups; the host network, because
#   the bridge plugin's iptables are not available; explicit ulimits, because podman's default
#   (1048576 open files) exceeds this machine's hard limit; events in a file, because no journald;
# - `docker` is podman itself (deploy/podman/docker, installed as /usr/local/bin/docker): podman's own
#   CLI reports the container's exit status, which the Docker CLI talking to podman before 4.6 loses
#   (`docker run --rm` answers 0); like Docker, it creates a bind mount's missing host directory.
#   A Docker CLI with no engine of its own found there is moved aside, to docker-client;
# - a `docker` group for the users who may use the engine's socket (deploy/podman/service.sh).
set -euo pipefail

if [[ $(id -u) != 0 ]]; then
    echo "deploy/podman/setup.sh: must run as root (it writes /etc/containers); run it with sudo" >&2
    exit 2
fi
command -v podman >/dev/null || { echo "deploy/podman/setup.sh: podman is not installed (apt-get install podman)" >&2; exit 2; }

mkdir -p /etc/containers/containers.conf.d
cat > /etc/containers/containers.conf.d/50-joulebench.conf <<CONF
# Written by joulebench's deploy/podman/setup.sh.
[containers]
netns = "host"
default_ulimits = ["nofile=$(ulimit -Sn):$(ulimit -Hn)", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

shim=/usr/local/bin/docker
here=$(cd "$(dirname "$0")" && pwd)
if [[ -e $shim ]] && ! cmp -s "$shim" "$here/docker" && ! grep -q "deploy/podman/setup.sh installs it" "$shim"; then
    mv "$shim" "$shim-client"
    echo "deploy/podman/setup.sh: moved $shim (a Docker CLI with no engine here) to $shim-client: \`docker\` is podman" >&2
fi
install -m 0755 "$here/docker" "$shim"
getent group docker >/dev/null || groupadd --system docker
podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null
