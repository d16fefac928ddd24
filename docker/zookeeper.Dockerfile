# ZooKeeper for `docker compose --profile ha`: Debian's package on the same base image as the
# cluster's (python:3.11-slim, made locally by scripts/docker-local.sh), no registry needed.
# Standalone, data on the volume at /var/lib/zookeeper, client port 2181, runs as the
# package's `zookeeper` user. Sessions may be as short as 2 ticks (0.4 s) and as long as 60 s:
# the masters ask for theirs (--zk-session-timeout, 5 s by default).
FROM python:3.11-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends zookeeper \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/zookeeper/data /etc/zookeeper/compose \
    && chown -R zookeeper:zookeeper /var/lib/zookeeper \
    && printf '%s\n' "tickTime=200" "dataDir=/var/lib/zookeeper/data" "clientPort=2181" \
        "admin.enableServer=false" "4lw.commands.whitelist=ruok,srvr,mntr" \
        "minSessionTimeout=400" "maxSessionTimeout=60000" "maxClientCnxns=0" \
        >/etc/zookeeper/compose/zoo.cfg \
    && printf '%s\n' '#!/bin/sh' '. /etc/zookeeper/conf_example/environment' \
        'exec java -Xmx256m -XX:+UseSerialGC -cp "$CLASSPATH" \' \
        '    org.apache.zookeeper.server.ZooKeeperServerMain /etc/zookeeper/compose/zoo.cfg' \
        >/usr/local/bin/zookeeper-start \
    && chmod +x /usr/local/bin/zookeeper-start

USER zookeeper
EXPOSE 2181
VOLUME /var/lib/zookeeper
CMD ["zookeeper-start"]
