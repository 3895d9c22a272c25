"""Create the job topics up front, so no client depends on broker-side auto-creation."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from eventing.config import KafkaSecurity

DEFAULT_PARTITIONS = 4


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = DEFAULT_PARTITIONS, *,
                  security: KafkaSecurity | None = None) -> None:
    """``security`` None: plaintext without auth."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(security or KafkaSecurity()).client_kwargs())
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another client
    finally:
        admin.close()
