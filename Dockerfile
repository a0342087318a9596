# CPU image: the one static binary on a small Debian runtime.
#   docker build -t llmserve .
#   docker run -p 8000:8000 -v ~/.cache/huggingface:/root/.cache/huggingface llmserve --model Qwen/Qwen2.5-0.5B-Instruct
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/llmserve ./cmd/llmserve && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/loadgen ./cmd/loadgen

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/llmserve", "--host", "0.0.0.0", "--port", "8000"]
