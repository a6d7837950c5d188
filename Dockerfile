# The hexdispatch server image: the front door, and (same image) the Ray nodes hosting the cell actors,
# so every node runs the same code and the same Ray and Python versions.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # numba's compiled kernels are cached here, in the image, not next to the read-only sources
    NUMBA_CACHE_DIR=/var/cache/hexdispatch/numba \
    HEXDISPATCH_HOME=/var/lib/hexdispatch

RUN useradd --create-home --uid 10001 hexdispatch \
    && mkdir -p /var/cache/hexdispatch/numba /var/lib/hexdispatch \
    && chown -R hexdispatch /var/cache/hexdispatch /var/lib/hexdispatch

WORKDIR /opt/hexdispatch
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir actors server dispatch clients bench store runtime \
    && touch actors/__init__.py server/__init__.py dispatch/__init__.py clients/__init__.py bench/__init__.py \
       store/__init__.py runtime/__init__.py \
    && pip install . && pip uninstall -y hexdispatch
COPY actors ./actors
COPY server ./server
COPY dispatch ./dispatch
COPY store ./store
COPY runtime ./runtime
COPY clients ./clients
COPY bench ./bench
COPY docs ./docs
RUN pip install --no-deps .

USER hexdispatch
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/v1/health', timeout=2)" || exit 1
CMD ["hexdispatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
