# One image for every cluster process: `cluster master`, `cluster slave`, the client commands.
# Built and run by docker-compose.yml; installed the way the README installs it (pip install .).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The dependencies first, in their own layer, read from pyproject.toml: a code change then
# rebuilds only the layer below, not the downloads.
COPY pyproject.toml .
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print(*p['project']['dependencies'], *p['build-system']['requires'], sep='\n')" > /tmp/deps.txt \
    && pip install -r /tmp/deps.txt
COPY . .
RUN pip install --no-deps --no-build-isolation . \
    && useradd --create-home --uid 1000 cluster \
    && mkdir -p /data /work \
    && chown cluster:cluster /data /work

# Tasks run as this unprivileged user; /data (the master's database, a named volume)
# and /work (slave sandboxes) belong to it. Run under an init (compose: `init: true`) so
# killed task processes are reaped.
USER cluster
WORKDIR /work
EXPOSE 5050 5051
CMD ["cluster", "--help"]
