# syntax=docker/dockerfile:1
# A static outbox-relay on distroless, running as an unprivileged user.
#   docker build -t outbox-relay --build-arg VERSION=$(git describe --always) .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/outbox-relay ./cmd/outbox-relay

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
USER nonroot:nonroot
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
