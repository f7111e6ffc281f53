# syntax=docker/dockerfile:1
# A static outbox-relay on distroless, run as the numeric user 65532:65532
# (Kubernetes can check runAsNonRoot only for a numeric user).
#   make image
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --always) --build-arg REVISION=$(git rev-parse HEAD) .
# The build stage runs on the builder's own platform and cross-compiles for
# the target's, so a multi-platform build needs no emulation. Its Go is the
# go.mod's go (or toolchain) version; cmd/outbox-relay's tests check both
# that and the rest of this file.
FROM --platform=$BUILDPLATFORM golang:1.26.0-bookworm AS build
ARG TARGETOS TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" \
      -o /out/outbox-relay ./cmd/outbox-relay

# Distroless publishes no version tags (GoogleContainerTools/distroless#686):
# the Debian release in the name is the pin. Add @sha256:<digest> after the
# tag to pin the exact image your registry serves.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
