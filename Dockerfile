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

ENTRYPOINT ["metersync"]
CMD ["run"]
