# metersync as a container: non-root, settings from METERSYNC_* variables or a mounted TOML file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin metersync \
    && mkdir /data && chown metersync:metersync /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /src

USER metersync
WORKDIR /data
# SQLite in the volume by default; point METERSYNC_DATABASE_URL at PostgreSQL in production.
ENV METERSYNC_DATABASE_URL=sqlite:////data/metersync.db
VOLUME ["/data"]

# The service's HTTP face (health, readiness, metrics, webhooks, the OpenMeter-compatible API)
# listens on loopback unless told otherwise: to reach it from outside the container, set
# METERSYNC_HTTP_BIND=0.0.0.0:8888 and METERSYNC_HTTP_TOKENS='["a-long-random-token"]' (without
# a token, metersync refuses to listen beyond loopback).
EXPOSE 8888
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8888/healthz', timeout=2)"

ENTRYPOINT ["metersync"]
CMD ["run"]
