"""CloudEvents wire formats: the event model and JSON format, the Kafka and HTTP bindings, their errors
and the error codes of dead letters. A leaf: imports no other kzero package."""
