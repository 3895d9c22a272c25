"""OpenAI's Batch API (``/v1/files``, ``/v1/batches``) over the Kafka path: ``python -m eventing batch-api``."""
