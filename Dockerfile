# One image for every service: the entrypoint is the `fanout` console script, the command picks
# the service (`producer --host 0.0.0.0 --port 8000`, `consumer`, `fakegraph ...`).
#
#   docker build -t fanout .
#   docker run --rm -p 8000:8000 -e FANOUT_REDIS_URL=... fanout producer --host 0.0.0.0
#
# Pin the base by digest in your registry mirror (python:3.11-slim@sha256:...) for repeatable
# builds; both stages must use the same base, the venv's interpreter is a symlink into it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
# Every dependency ships manylinux wheels for amd64 and arm64: no compiler is needed here.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY services ./services
COPY shared ./shared
RUN pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot against it.
RUN groupadd --system --gid 10001 fanout \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fanout
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# producer HTTP (API, /healthz, /readyz, /metrics); consumer /metrics, /healthz, /readyz
EXPOSE 8000 9100
ENTRYPOINT ["fanout"]
CMD ["--help"]
