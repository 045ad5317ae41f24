#!/usr/bin/env bash
# Installs everything joulebench and its test suite need on a fresh Debian/Ubuntu machine:
# a Python 3.11 virtualenv in .venv with the kit (torch==2.14.1, torchvision==0.29.1 pinned)
# and, when run as root with apt-get, the system packages some tests drive (Chromium for the
# MLflow UI test, podman + debootstrap for the container test).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
SYSTEM_PACKAGES=(git chromium chromium-driver podman runc debootstrap uidmap slirp4netns fuse-overlayfs)
# `mlflow run` with docker_env calls the docker CLI; podman-docker provides one where none is.
command -v docker >/dev/null || SYSTEM_PACKAGES+=(podman-docker)

if [[ "${JOULEBENCH_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    missing=()
    for package in "${SYSTEM_PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    echo "install.sh: not installing system packages (${SYSTEM_PACKAGES[*]}); the tests needing them skip with a reason" >&2
fi

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "install.sh: done; activate with: . .venv/bin/activate"
