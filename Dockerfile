# Portcullis container image: build on Debian with Rust, run on debian-slim as a non-root user.
# Build: docker build -t portcullis .      Run: docker run -p 8080:8080 portcullis
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# The default configuration, listening on all interfaces inside the container.
COPY conf/gateway.toml /etc/portcullis/gateway.toml
RUN sed -i 's/address = "127.0.0.1:8080"/address = "0.0.0.0:8080"/' /etc/portcullis/gateway.toml \
 && portcullis check -c /etc/portcullis
USER portcullis
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "-c", "/etc/portcullis"]
