# syntax=docker/dockerfile:1
# spqr-serve container image: spqr-server, spqr-client, spqr-quantize and spqr-eval (the last two
# when the tree builds them), the reference config and the embedded default model.
#
#   docker build -t spqr-serve:0.1.0 .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 spqr-serve:0.1.0
#   docker run --gpus all -v $PWD/models:/models --entrypoint spqr-quantize spqr-serve:0.1.0 --help
#
# Build arguments:
#   CUDA_VERSION             CUDA base image version (13.0.1; must match the toolkit the code targets)
#   SPQR_CUDA_ARCHITECTURES  GPU architectures compiled for ("90" = H100/H200; add "80;86;89" for
#                            A100, A10/RTX 30x0, L4/RTX 40x0 at the price of a longer build)
#   JOBS                     parallel compile jobs (default: all cores of the build machine)
#   DEFAULT_MODEL            model directory of the repository baked in as /opt/spqr/models/default:
#                            a dense checkpoint with a calibration.txt (the reference model) is
#                            quantized with spqr-quantize exactly as tools/quickstart.sh does; a SpQR
#                            or other dense directory is copied as is; when it does not exist, the
#                            generated test model tests/data/test-model is copied
# What was and was not verified about this file: docs/deployment.md, "Container image".

ARG CUDA_VERSION=13.0.1

# ---- builder: the same install and build scripts as the README and .ci/run ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS builder
ARG SPQR_CUDA_ARCHITECTURES=90
ARG JOBS=
ARG DEFAULT_MODEL=models/reference
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# Dependencies in their own layer, so source edits do not reinstall them.
COPY tools/install-deps.sh tools/install-deps.sh
RUN bash tools/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# SPQR_NATIVE=OFF: portable x86-64 (AVX2/FMA/F16C) code instead of -march=native of the build host.
RUN CMAKE_ARGS="-DSPQR_NATIVE=OFF" SPQR_CUDA=ON \
    SPQR_CUDA_ARCHITECTURES="${SPQR_CUDA_ARCHITECTURES}" BUILD_DIR=build \
    JOBS="${JOBS:-$(nproc)}" bash tools/build.sh
# Stage what the runtime image needs under /opt/spqr. spqr-server and spqr-client are required;
# spqr-quantize and spqr-eval are copied when the tree builds them.
RUN set -eu; \
    mkdir -p /opt/spqr/bin /opt/spqr/config /opt/spqr/models; \
    for tool in spqr-server spqr-client spqr-quantize spqr-eval; do \
      path=$(find build -type f -name "$tool" -perm -u+x | head -n 1); \
      if [ -n "$path" ]; then \
        install -m 0755 -s "$path" /opt/spqr/bin/; \
      elif [ "$tool" = spqr-server ] || [ "$tool" = spqr-client ]; then \
        echo "Dockerfile: the build produced no $tool" >&2; exit 1; \
      else \
        echo "Dockerfile: no $tool in this tree; the image ships without it"; \
      fi; \
    done; \
    cp config/spqr-server.yaml /opt/spqr/config/spqr-server.yaml; \
    if [ -f "$DEFAULT_MODEL/calibration.txt" ] && \
       ! grep -q quantization_config "$DEFAULT_MODEL/config.json"; then \
      /opt/spqr/bin/spqr-quantize --model "$DEFAULT_MODEL" --out /opt/spqr/models/default \
        --calibration "$DEFAULT_MODEL/calibration.txt" --method spqr --wbits 4 --beta1 16 \
        --beta2 16 --stats_bits 3 --tau 0.2 --nsamples 32 --seqlen 512 --seed 0; \
    elif [ -f "$DEFAULT_MODEL/config.json" ]; then \
      cp -r "$DEFAULT_MODEL" /opt/spqr/models/default; \
    else \
      cp -r tests/data/test-model /opt/spqr/models/default; \
    fi; \
    ls -l /opt/spqr/bin /opt/spqr/models/default

# ---- runtime: CUDA runtime libraries + the shared libraries the binaries link ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04 (noble) runtime packages of the -dev packages tools/install-deps.sh installs:
# gRPC 1.51 (+ reflection), protobuf 3.21, abseil 20220623, prometheus-cpp 1.0 (core + pull, which
# brings civetweb), yaml-cpp 0.8, SentencePiece, PCRE2, utf8proc, OpenMP (libgomp). CUDA runtime
# and cuBLAS come with the base image. utf8proc's runtime package carries its soname
# (libutf8proc2 on Debian 12, another number on newer releases): it is looked up by name pattern.
RUN apt-get update \
 && utf8proc=$(apt-cache search --names-only '^libutf8proc[0-9]+$' | cut -d' ' -f1 | sort | tail -n 1) \
 && apt-get install -y --no-install-recommends \
      libgrpc++1.51t64 libprotobuf32t64 libabsl20220623t64 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libyaml-cpp0.8 libsentencepiece0 libpcre2-8-0 "$utf8proc" libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/spqr /opt/spqr
# Fail the build here, not at the first start, if a linked library is missing.
RUN if ldd /opt/spqr/bin/* | grep -F "not found"; then \
      echo "Dockerfile: the runtime stage lacks the libraries above" >&2; exit 1; \
    fi
RUN groupadd --system --gid 10001 spqr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /opt/spqr --shell /usr/sbin/nologin spqr
ENV PATH=/opt/spqr/bin:${PATH}
WORKDIR /opt/spqr
USER 10001:10001
# 50051: gRPC (spqr.v1.SpqrService, grpc.health.v1.Health, reflection). 9464: Prometheus /metrics.
EXPOSE 50051 9464
# Healthy only when grpc.health.v1 answers SERVING (model loaded and warmed up). The start period
# covers model loading; a draining server (SIGTERM) reports NOT_SERVING.
HEALTHCHECK --interval=15s --timeout=6s --start-period=300s --retries=3 \
  CMD ["spqr-client", "--address", "127.0.0.1:50051", "--timeout", "5", "health"]
# The reference config, with the listen addresses opened to the container's network.
ENTRYPOINT ["spqr-server"]
CMD ["--config", "/opt/spqr/config/spqr-server.yaml", "--listen", "0.0.0.0:50051", \
     "--metrics.address=0.0.0.0", "--model", "/opt/spqr/models/default"]
