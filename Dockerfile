# Portcullis container image: built on Debian with Rust, run on debian-slim as a non-root user.
#   docker build -t portcullis .
#   docker run -p 8080:8080 portcullis
#   docker run -p 8443:8443 -v "$PWD/deploy/portcullis:/etc/portcullis:ro" portcullis
# The configuration is read from /etc/portcullis (every *.toml in it, in name order, so mount a
# directory holding only your configuration, with listeners on 0.0.0.0). The image bakes in
# conf/gateway.toml, listening on 0.0.0.0:8080, and checks it at build time.
FROM rust:1-bookworm AS build
# Pingora's build needs cmake; the TLS backend links Debian's libssl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/portcullis /out/portcullis

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin portcullis
COPY --from=build /out/portcullis /usr/local/bin/portcullis
COPY conf/gateway.toml /etc/portcullis/gateway.toml
# Inside the container the public listener takes every interface; the admin one stays on
# loopback, where the HEALTHCHECK below reaches it.
# docker stop waits 10 s before SIGKILL; the gateway exits as soon as its requests are done, and
# at most shutdown_grace after SIGTERM: keep that below 10 s.
RUN sed -i -e 's/^address = "127.0.0.1:8080"/address = "0.0.0.0:8080"/' \
           -e 's/^shutdown_grace = "30s"/shutdown_grace = "8s"/' /etc/portcullis/gateway.toml \
 && portcullis check -c /etc/portcullis
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/portcullis", "health", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "-c", "/etc/portcullis"]
