# teal for CPU: build with the Rust toolchain image, run on a slim Debian. For GPUs see Dockerfile.cuda.
#
#   docker build -t teal:latest .
#   docker run -p 8080:8080 -v $PWD/models:/models teal:latest serve --models-dir /models --host 0.0.0.0
#
# The binary is built for x86-64-v3 (AVX2), like a local build (.cargo/config.toml).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin teal && strip target/release/teal

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 teal
COPY --from=build /src/target/release/teal /usr/local/bin/teal
USER teal
WORKDIR /home/teal
EXPOSE 8080
ENTRYPOINT ["teal"]
CMD ["serve", "--host", "0.0.0.0", "--models-dir", "/models"]
