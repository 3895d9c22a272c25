"""Attribute names: OpenTelemetry semantic conventions (messaging, http, rpc, db, gen_ai) and ours.

Prompts and outputs are never recorded: only sizes, counts, names and ids.
"""

from __future__ import annotations

# messaging (Kafka)
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"  # send | receive | process
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_PARTITION = "messaging.destination.partition.id"
MESSAGING_OFFSET = "messaging.kafka.offset"
MESSAGING_GROUP = "messaging.consumer.group.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_BATCH_COUNT = "messaging.batch.message_count"

# calls
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
URL_FULL = "url.full"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS = "rpc.grpc.status_code"
ERROR_TYPE = "error.type"

# vector store
DB_SYSTEM = "db.system"
DB_OPERATION = "db.operation.name"
DB_COLLECTION = "db.collection.name"

# model work
GEN_AI_OPERATION = "gen_ai.operation.name"  # embeddings | text_completion | chat
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_FIRST_TOKEN_EVENT = "gen_ai.first_token"  # an event on the request span (continuous engine)

# kzero
KZERO_MODEL = "kzero.model"
KZERO_ITEMS = "kzero.items"
KZERO_BATCH_SIZE = "kzero.batch_size"
KZERO_BATCH_ID = "kzero.batch_id"  # the span id of the predictor's batch span
KZERO_QUEUE_WAIT_MS = "kzero.queue_wait_ms"
KZERO_ADAPTER = "kzero.adapter"  # the LoRA adapter a request runs with (absent: the base model)
KZERO_ADAPTERS = "kzero.adapters"  # the adapters of a batch's rows
KZERO_JOB_ID = "kzero.job_id"
KZERO_REQUEST_ID = "kzero.request_id"
KZERO_ATTEMPT = "kzero.attempt"
KZERO_ERROR_CODE = "kzero.error_code"
KZERO_STEP = "kzero.step"
KZERO_PASSAGES = "kzero.passages"
KZERO_GROUNDING_SCORE = "kzero.grounding.score"  # the ground step: how well the answer matches its sources
KZERO_ANSWER_MODE = "kzero.answer.mode"  # generative | extractive
