"""CloudEvents over Kafka driving batch inference: worker, submit, results, replay."""
