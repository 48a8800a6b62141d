# The gateway as deployed: the `stock-gateway` command (uvicorn on the gateway's own
# WebSocket protocol, the fast path; no permessage-deflate, 4 KiB client frames, proxy
# headers trusted from FORWARDED_ALLOW_IPS), installed as a wheel with exactly the
# versions of requirements/gateway.lock. Configure with environment variables (see
# .env.example); DEMO=true needs no key.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/gateway.lock requirements/gateway.lock
RUN pip install --require-hashes --no-deps -r requirements/gateway.lock
# The source tree less what .dockerignore leaves out (tests, benchmarks, local state).
COPY . ./
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000
COPY requirements/gateway.lock /tmp/gateway.lock
COPY --from=build /wheels /tmp/wheels
RUN pip install --require-hashes --no-deps -r /tmp/gateway.lock \
    && pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/gateway.lock \
    && useradd --system --no-create-home --uid 10001 gateway \
    && mkdir -p /app/data && chown gateway /app/data

WORKDIR /app
USER gateway
EXPOSE 8000
# The bar store (BAR_STORE_URL unset: sqlite:///data/bars.sqlite3 under /app): keep it
# across deploys.
VOLUME ["/app/data"]

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]

# Finnhub allows one socket per key: run exactly one of these per key (docs/deploy.md).
# Behind a proxy or load balancer, set FORWARDED_ALLOW_IPS to its addresses so
# per-address limits see the real clients; never "*" if the container is reachable
# directly.
CMD ["stock-gateway"]
