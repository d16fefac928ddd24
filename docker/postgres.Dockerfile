# PostgreSQL for `docker compose --profile ha`: Debian's package on the same base image as the
# cluster's (python:3.11-slim, made locally by scripts/docker-local.sh), no registry needed.
# postgres-start (beside this file) makes the cluster on the volume at first start: user and
# database `cluster`, password $CLUSTER_PG_PASSWORD, password authentication over TCP.
# PostgreSQL refuses to run as root: it runs as the package's `postgres` user.
FROM python:3.11-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql \
    && chmod 700 /var/lib/postgresql/data \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)" /usr/local/lib/pgbin
COPY postgres-start /usr/local/bin/postgres-start

USER postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
VOLUME /var/lib/postgresql/data
CMD ["postgres-start"]
