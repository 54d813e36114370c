# remotejob worker image: `remotejob worker` under dumb-init, as a non-root user.
#
# Build (from the repository root):
#   docker build -t remotejob .
# Run a worker (options after the image name go to `remotejob worker`; see `remotejob worker --help`):
#   docker run --rm -e REMOTEJOB_STORE=s3://BUCKET/prefix -e REMOTEJOB_QUEUES=sqs:// \
#       -e REMOTEJOB_NAME=jobs -e AWS_REGION=eu-west-1 remotejob mymodule:handler --concurrency 8
#   docker run --rm -e ... remotejob --exec 'convert {input} {outdir}/thumb.png' --concurrency 4
# Without arguments it prints the worker's help. AWS credentials come the usual boto3 way (task or
# pod role, or AWS_* variables).
#
# The handler's module must be importable in the container. Either derive an image:
#   FROM remotejob
#   COPY mymodule.py ./
# (the working directory, /home/remotejob, is on the import path), or mount your code and set
# PYTHONPATH (docker run -v "$PWD/src:/app:ro" -e PYTHONPATH=/app ...). Install the handler's own
# dependencies in the derived image (switch to `USER root` for the install, then back to
# `USER 10001:10001`).
#
# Stopping: `docker stop` (and ECS, Kubernetes, Batch) send SIGTERM; dumb-init, PID 1, passes it
# on to the worker, which stops taking jobs and lets running ones finish within --grace-period
# (default 30 s), then exits 0. Give the engine's stop timeout more than the grace period
# (docker stop -t, default 10 s; ECS stopTimeout, default 30 s, at most 120 s on Fargate;
# Kubernetes terminationGracePeriodSeconds, default 30 s), or lower --grace-period: else the
# engine's SIGKILL cuts the running jobs off (they run again after their visibility timeout).
# dumb-init also reaps the processes `worker --exec` leaves behind.

FROM python:3.12-slim AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Wheel stage: wheels of the package built from this source tree (with its `metrics` extra for
# --metrics-port), of its dependencies and of dumb-init. The runtime stage installs exactly these,
# offline; the source tree and the build tools stay out of the final image.
FROM base AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY remotejob/ remotejob/
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[metrics]" "dumb-init==1.2.5.post1"

FROM base
# The wheels are bind-mounted (BuildKit, the default builder since Docker 23), not copied: no
# layer keeps them. A fixed, numeric uid/gid: files on mounted volumes get a known owner, and
# Kubernetes' runAsNonRoot can check a numeric USER (it refuses a user name). REMOTEJOB_HOME (the
# embedded backend's folder, for a demo on one host) exists and is the user's, so that a named
# volume mounted on it is writable.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && groupadd --gid 10001 remotejob \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin remotejob \
    && install -d -o 10001 -g 10001 /home/remotejob/.remotejob
ENV REMOTEJOB_HOME=/home/remotejob/.remotejob \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/remotejob
STOPSIGNAL SIGTERM
ENTRYPOINT ["dumb-init", "--", "remotejob", "worker"]
CMD ["--help"]
