#!/usr/bin/env bash
# Installs everything joulebench and its test suite need on a fresh Debian/Ubuntu machine:
# a Python 3.11 virtualenv in .venv with the kit (torch==2.14.1, torchvision==0.29.1 pinned)
# and, when run as root with apt-get, the system packages some tests drive (Chromium for the
# MLflow UI test; the container engine and debootstrap for the container proof; Slurm and munge
# for the Slurm sweep tests).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
# slurm-wlm and munge: tests/support/slurm.py runs its own munged, slurmctld and slurmd from
# temp folders for the `sweep --backend slurm` tests; any system-wide ones are left alone.
SYSTEM_PACKAGES=(git chromium chromium-driver debootstrap slurm-wlm munge)
# The container engine: Docker where its engine (dockerd) is installed; elsewhere podman, with
# `docker` as podman itself (deploy/podman/docker) for `mlflow run` and the docs, set
# up by deploy/podman/setup.sh below.
PODMAN_PACKAGES=(podman runc uidmap slirp4netns fuse-overlayfs)
command -v dockerd >/dev/null || SYSTEM_PACKAGES+=("${PODMAN_PACKAGES[@]}")

if [[ "${JOULEBENCH_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    missing=()
    for package in "${SYSTEM_PACKAGES[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    command -v dockerd >/dev/null || deploy/podman/setup.sh
else
    echo "install.sh: not installing system packages (${SYSTEM_PACKAGES[*]}); the tests needing them skip with a reason" >&2
fi

"$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "install.sh: done; activate with: . .venv/bin/activate"
