# The kser image: the `kser` command with every extra (PostgreSQL, confluent-kafka,
# Prometheus, OpenTelemetry, encryption) and the examples; docker-compose.yml runs its
# workers, API server and scheduler from it.
#   docker build -t kser .
#   docker run --rm kser worker examples.stack.app:registry --topic stack
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY kser ./kser
RUN pip install --no-cache-dir ".[confluent,postgres,prometheus,otel,crypto]"
COPY examples ./examples
# (the examples are imported by module path: examples.stack.app:registry)
ENV PYTHONPATH=/app
# not root: the workers need no privilege (their metrics directory is under /tmp)
USER nobody
ENTRYPOINT ["kser"]
CMD ["--help"]
