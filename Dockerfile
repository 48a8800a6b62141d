# The gateway as deployed: uvicorn on the gateway's own WebSocket protocol (the fast path),
# no permessage-deflate, 4 KiB client frames, proxy headers trusted from the proxy.
# Configure with environment variables (see .env.example); DEMO=true needs no key.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The source tree less what .dockerignore leaves out (tests, benchmarks, local state).
COPY . ./
RUN pip install . \
    && useradd --system --no-create-home --uid 10001 gateway

RUN mkdir /app/data && chown gateway /app/data
USER gateway
EXPOSE 8000
# The bar store (BAR_STORE_URL unset: sqlite:///data/bars.sqlite3): keep it across deploys.
VOLUME ["/app/data"]

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]

# Finnhub allows one socket per key: run exactly one of these per key (docs/deploy.md).
# Behind a proxy or load balancer, set FORWARDED_ALLOW_IPS to its addresses (uvicorn
# reads it) so per-address limits see the real clients; never "*" if the container is
# reachable directly.
CMD ["uvicorn", "gateway:app", "--host", "0.0.0.0", "--port", "8000", "--http", "stock_gateway.server.uvicorn_protocols:GatewayHttpProtocol", "--ws-per-message-deflate", "false", "--ws-max-size", "4096", "--ws-ping-interval", "20", "--ws-ping-timeout", "20", "--proxy-headers", "--timeout-graceful-shutdown", "10", "--no-access-log"]
