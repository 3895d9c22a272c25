"""Topic administration: create the job topics up front, so no client depends on broker-side
auto-creation; and how far a consumer group is behind a topic."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import CoordinatorNotAvailableError, TopicAlreadyExistsError

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


def group_lag(bootstrap: str, group: str, topic: str, *, security: KafkaSecurity | None = None) -> int:
    """Records of ``topic`` that ``group`` has not committed yet (every record, before its first commit)."""
    kwargs = (security or KafkaSecurity()).client_kwargs()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kwargs)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kwargs)
    try:
        consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        try:
            committed = admin.list_consumer_group_offsets(group, partitions=partitions)
        except CoordinatorNotAvailableError:  # the group has no coordinator yet (nor offsets), or not just now
            committed = {}
        ends = consumer.end_offsets(partitions)
        return sum(end - (committed[p].offset if p in committed and committed[p].offset >= 0 else 0)
                   for p, end in ends.items())
    finally:
        consumer.close()
        admin.close()
