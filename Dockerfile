# One image for every meshgate process; the command picks the service:
#   docker build -t meshgate .
#   docker run meshgate serve router          # one service (compose, Kubernetes)
#   docker run -p 8080:8080 meshgate          # the whole mesh in one container (`meshgate up`)
#
# Build stage: install meshgate and its dependencies (binary wheels) into a virtualenv,
# so the runtime image carries no source tree, build directory or pip cache.
FROM python:3.11-slim AS build
RUN python -m venv /opt/meshgate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshgate ./meshgate
COPY services ./services
COPY edge ./edge
COPY admin ./admin
RUN /opt/meshgate/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim
ENV PATH=/opt/meshgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/meshgate /opt/meshgate
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it.
# The group first, with the same number: --user-group alone would pick a gid like 999.
RUN groupadd --system --gid 10001 meshgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin meshgate
USER 10001:10001
WORKDIR /tmp
# edge (HTTP), auth, quota, validation, router, engine (gRPC), Prometheus /metrics.
EXPOSE 8080 50051 50052 50053 50054 50055 9100
ENTRYPOINT ["meshgate"]
CMD ["up", "--host", "0.0.0.0"]
