# joulebench in a CUDA container: `docker run --gpus all IMAGE train --model vgg16 --method stego`,
# or `mlflow run .` (MLproject's docker_env). docs/containers.md tells where data and the MLflow
# store live and who may write them.
#
# BASE_IMAGE must hold Python >= 3.11 with torch and torchvision at the versions pyproject.toml
# pins (pip then leaves them alone); the default is the official PyTorch CUDA runtime image of
# that torch build. Where no registry is reachable, any local image with the same contents works
# (the container test builds one with debootstrap: tests/container_support/).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# The dependency list alone, read from pyproject.toml: the large layer that installs it is then
# rebuilt when the list changes, not on every other edit of pyproject.toml or of the code.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

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

# A fixed UID, so that ownership of mounted data and MLflow stores can be planned on the host.
# 1000 is the first user on most Linux hosts; an image user already holding it (ubuntu on
# Ubuntu 24.04 bases) is removed first.
ARG APP_UID=1000
COPY . .
# Editable install: the code that runs is the code in /app/src.
# /mlflow/tmp: `mlflow run` mounts a host sqlite store at /mlflow/tmp/mlruns, and SQLite writes
# its journal beside it, so the directory must belong to the user.
RUN pip install --no-cache-dir --no-deps --editable . \
    && if getent passwd "${APP_UID}" > /dev/null; then userdel --remove "$(id --name --user "${APP_UID}")"; fi \
    && useradd --create-home --no-log-init --uid "${APP_UID}" --user-group joulebench \
    && install --directory --owner=joulebench --group=joulebench /app/data /mlflow/tmp

# The image has no .git: the commit it was built from, for the runs' git_commit tag
# (docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" ...).
ARG GIT_COMMIT=unknown
ENV JOULEBENCH_GIT_COMMIT=${GIT_COMMIT}

USER ${APP_UID}
ENTRYPOINT ["joulebench"]
CMD ["--help"]
