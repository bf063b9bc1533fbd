# howk, built from source. The build stage needs cmake, a C/C++ toolchain and libclang for the
# native dependencies (librdkafka, Lua, RocksDB).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin howk

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 howk \
    && mkdir -p /var/lib/howk && chown howk /var/lib/howk
COPY --from=build /src/target/release/howk /usr/local/bin/howk
USER howk
EXPOSE 8080
ENTRYPOINT ["howk"]
