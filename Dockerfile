# joulebench in a CUDA container: `docker run --gpus all IMAGE train --model vgg16 --method stego`,
# or `mlflow run .` (MLproject's docker_env). docs/containers.md tells where data and the MLflow
# store live and whose files the run writes.
#
# BASE_IMAGE must hold Python >= 3.11 with torch and torchvision at the versions pyproject.toml
# pins (pip then leaves them alone); the default is the official PyTorch CUDA runtime image of
# that torch build. Where no registry is reachable, deploy/podman/base_image.py builds a local
# image with the same contents (localhost/joulebench-base:torch-2.14.1).
ARG BASE_IMAGE=docker.io/pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# The dependency list alone, read from pyproject.toml: the large layer that installs it is then
# rebuilt when the list changes, not on every other edit of pyproject.toml or of the code.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt

FROM ${BASE_IMAGE}

# NVML (the GPU energy counter) needs the `utility` capability as well as `compute`.
# The image has no git: MLflow's GitPython would warn about that at every run.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet

WORKDIR /app

COPY --from=requirements /tmp/requirements.txt /tmp/
RUN pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
# Editable install: the code that runs is the code in /app/src.
# /app/data is where `./data` is mounted. /mlflow/tmp: `mlflow run` mounts a host sqlite store at
# /mlflow/tmp/mlruns and SQLite writes its journal beside it, as whichever user owns that store
# (the entrypoint steps down to it): writable by all, like /tmp.
RUN pip install --no-cache-dir --no-deps --editable . \
    && install -m 0755 deploy/container/entrypoint.sh /usr/local/bin/joulebench-entrypoint \
    && install --directory /app/data \
    && install --directory --mode=1777 /mlflow/tmp

# The image has no .git: the commit it was built from, for the runs' git_commit tag
# (docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" ...). Written by a RUN, whose cache
# key holds the argument's value: podman 4.3 reuses a cached ENV layer built from another value.
ARG GIT_COMMIT=unknown
RUN printf '%s\n' "${GIT_COMMIT}" > /app/GIT_COMMIT
ENV JOULEBENCH_GIT_COMMIT=${GIT_COMMIT}

# Starts as root and runs joulebench as the owner of the store or working directory
# (deploy/container/entrypoint.sh): any user's files stay theirs, without `--user`.
ENTRYPOINT ["joulebench-entrypoint"]
CMD ["--help"]
