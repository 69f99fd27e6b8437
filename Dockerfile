# Image of a kser worker running the dice example (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY kser ./kser
RUN pip install --no-cache-dir ".[confluent,postgres]"
COPY examples ./examples
CMD ["python", "examples/dice/consumer.py"]
