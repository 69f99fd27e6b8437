"""Operations: sequences of tasks, each task one Kafka message."""
