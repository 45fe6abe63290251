# syntax=docker/dockerfile:1
# Pledgewatch: API, staff pages and scheduler in one image.
#   docker build -t pledgewatch .
#   docker run -p 8000:8000 pledgewatch                 (SQLite in the /data volume)
#   docker compose up                                    (with PostgreSQL)

# ---- build: a virtual environment with the pinned dependencies and the project ----
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# The pinned dependencies first: this layer is reused until requirements.lock changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps .

# ---- runtime: the virtual environment, the migrations and a non-root user ----
FROM python:3.11-slim AS runtime

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PLEDGEWATCH_DATABASE_URL=sqlite:////data/pledgewatch.db

RUN useradd --system --no-log-init --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin pledgewatch \
    && mkdir -p /data \
    && chown pledgewatch:pledgewatch /data

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# `pledgewatch db upgrade` (and /readyz) read alembic.ini and migrations/ from here.
COPY --from=build /src/alembic.ini ./
COPY --from=build /src/migrations ./migrations

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Migrate first, then replace the shell with the server so it gets the signals (exec).
CMD ["sh", "-c", "pledgewatch db upgrade && exec pledgewatch serve --host 0.0.0.0 --port 8000"]
