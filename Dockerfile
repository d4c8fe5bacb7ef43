# One image for every meshgate process; the command picks the service:
#   docker run meshgate serve router
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY meshgate ./meshgate
COPY services ./services
COPY edge ./edge
RUN pip install --no-cache-dir . && useradd --system meshgate
USER meshgate
ENTRYPOINT ["meshgate"]
CMD ["up", "--host", "0.0.0.0"]
