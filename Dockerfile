# The agent sidecar as a container image. Two stages: the release build (the flags of
# scripts/release-flags.sh: the Swift runtime and Foundation linked in statically), then a slim Debian
# runtime with only what the binary links (sqlite3, hiredis, jemalloc, zlib, libstdc++), CA certificates
# and tzdata, running as an unprivileged user.
#
#   docker build -t agent-sidecar .
#   docker run --rm -p 8080:8080 -p 9090:9090 agent-sidecar          # the embedded default (mocks)
#
# The image listens on 0.0.0.0 inside its network namespace (SIDECAR_PROXY_LISTEN/SIDECAR_ADMIN_LISTEN);
# keep the proxy port unpublished outside the pod or compose network in production.

FROM swift:6.3-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libhiredis-dev libjemalloc-dev libsqlite3-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
COPY scripts ./scripts
RUN . scripts/release-flags.sh && swift build "${RELEASE[@]}" --product sidecar \
 && install -D -m 0755 "$(swift build -c release --show-bin-path)/sidecar" /out/sidecar

FROM debian:bookworm-slim AS runtime
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libhiredis0.14 libjemalloc2 libsqlite3-0 zlib1g libstdc++6 ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --home-dir /var/lib/agent-sidecar --shell /usr/sbin/nologin sidecar \
 && install -d -o sidecar -g sidecar -m 0700 /var/lib/agent-sidecar
COPY --from=build /out/sidecar /usr/local/bin/sidecar
COPY deploy/sidecar.dev.yaml /etc/agent-sidecar/sidecar.yaml
ENV SIDECAR_PROXY_LISTEN=0.0.0.0:8080 \
    SIDECAR_ADMIN_LISTEN=0.0.0.0:9090 \
    SIDECAR_STATE_DIR=/var/lib/agent-sidecar
USER 10001:10001
WORKDIR /var/lib/agent-sidecar
VOLUME ["/var/lib/agent-sidecar"]
EXPOSE 8080 9090
# SIGTERM drains (limits.drain_timeout, 15 s by default): give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sidecar"]
CMD ["run", "--config", "/etc/agent-sidecar/sidecar.yaml"]
