"""A corpus written for the retrieval tests: one short document per topic, one question per document.

Questions are phrased differently from their documents (few shared words), so a passing recall
says the embedding retrieval works, not that the words match.
"""

from __future__ import annotations

DOCS: dict[str, tuple[str, str]] = {
    "broker": ("kafka", "The Kafka broker keeps every event in an append-only log split into partitions. "
               "Consumers track their position with offsets, so a restarted worker resumes where it stopped."),
    "dlq": ("kafka", "Requests that keep failing are written to the dead-letter topic kzero.dlq together with the "
            "error code, the number of attempts and the original event, so nothing is silently dropped."),
    "exactly-once": ("kafka", "With transactions the producer writes results and the consumed offsets atomically; "
                     "readers using read_committed isolation never observe a half-finished batch."),
    "scale-zero": ("serving", "Knative removes every replica of an idle InferenceService and starts one again when a "
                   "request arrives, which saves GPU money at the price of a cold start."),
    "cold-start": ("serving", "The first start converts the quantized GGUF checkpoint into safetensors once; later "
                   "starts memory-map the cached files and become ready within seconds."),
    "batching": ("serving", "Concurrent calls that arrive within a few milliseconds are grouped into one forward "
                 "pass on the accelerator, multiplying throughput while each caller still receives its own output."),
    "readiness": ("serving", "The health endpoint reports ready only after the weights are loaded and a warm-up "
                  "inference succeeded; until then requests wait and finally get 503 with Retry-After."),
    "milvus": ("retrieval", "Milvus stores the chunk embeddings; the embedded Lite edition is a single local file, "
               "while production points the same client at a Milvus cluster URI."),
    "chunking": ("retrieval", "Documents are cut into pieces of about two hundred and fifty tokens that overlap by "
                 "thirty-two tokens, measured with the embedding model's own tokenizer."),
    "citations": ("retrieval", "Context passages are numbered in the prompt, and the numbers the model mentions in "
                  "its reply are returned as citations next to the source documents."),
    "tracing": ("observability", "A W3C traceparent travels in HTTP headers, gRPC metadata and Kafka record headers "
                "so one trace id connects the producer, the worker and the model server."),
    "metrics": ("observability", "Prometheus scrapes /metrics for request latency histograms, the queue depth and "
                "the distribution of batch sizes of every predictor."),
    "gpu-nodes": ("cluster", "GPU nodes carry a taint; the accelerator overlay adds a matching toleration, a node "
                  "selector and an nvidia.com/gpu resource limit to the predictor pod."),
    "security": ("cluster", "Pods run as a non-root user with a read-only root filesystem, drop all Linux "
                 "capabilities and use the RuntimeDefault seccomp profile."),
    "keda": ("cluster", "KEDA watches consumer lag on the requests topic and scales the worker Deployment from zero "
             "replicas to several and back again when the backlog is gone."),
    "strimzi": ("cluster", "The Strimzi operator manages the Kafka cluster on Kubernetes; topics are declared as "
                "KafkaTopic resources with their partition count and retention time."),
    "openai": ("api", "An OpenAI-compatible endpoint lets the official openai Python package call the server "
               "unchanged, including server-sent event streaming of chat completions."),
    "grpc": ("api", "Binary protobuf messages over HTTP/2 implement the open inference protocol version two, "
             "which suits clients that send many tensors with low overhead."),
    "cloudevents": ("api", "Every message is a CloudEvent with specversion, id, source and type; binary mode keeps "
                    "attributes in headers while structured mode wraps them in a JSON envelope."),
    "backpressure": ("kafka", "When the model falls behind, the worker pauses fetching from its partitions instead "
                     "of buffering without limit, and resumes once outstanding requests drain."),
    "retries": ("kafka", "Temporary failures such as refused connections or 503 answers are retried with "
                "exponentially growing, randomly jittered pauses that respect the server's Retry-After."),
    "tokens": ("serving", "Generation stops at the requested maximum number of new tokens or at a stop string, "
               "and the response reports prompt and completion token counts."),
    "embedding-model": ("retrieval", "all-MiniLM-L6-v2 maps sentences to 384-dimensional normalized vectors, so "
                        "cosine similarity between a question and a passage is a dot product."),
    "jobs": ("kafka", "A batch job is a JSON Lines file submitted as one request event per line with a shared "
             "job id; the results command collects answers and exits once all have arrived."),
}

QUESTIONS: list[tuple[str, str]] = [
    ("How does a consumer know where to continue after a crash?", "broker"),
    ("What happens to messages that can never be handled?", "dlq"),
    ("How do readers avoid seeing partial output of a batch?", "exactly-once"),
    ("Why does an unused model cost nothing, and what is the downside?", "scale-zero"),
    ("Why is the second launch of the language model faster than the first?", "cold-start"),
    ("How can many simultaneous users share one GPU efficiently?", "batching"),
    ("When does the service report that it can take traffic?", "readiness"),
    ("Where are the vectors kept, locally and in production?", "milvus"),
    ("How large are the pieces a document is split into?", "chunking"),
    ("How does the answer point back to the passages it used?", "citations"),
    ("How is a single request followed across all components?", "tracing"),
    ("Which numbers can a monitoring system collect from the server?", "metrics"),
    ("What is needed to schedule the model on a graphics card machine?", "gpu-nodes"),
    ("What restrictions harden the containers?", "security"),
    ("What adds worker replicas when a backlog builds up?", "keda"),
    ("How are Kafka and its topics installed on Kubernetes?", "strimzi"),
    ("Can I use the official OpenAI library against it?", "openai"),
    ("Which protocol uses protobuf over HTTP/2?", "grpc"),
    ("What are the required attributes of an event envelope?", "cloudevents"),
    ("What does the worker do when the model cannot keep up?", "backpressure"),
    ("How are transient errors handled before giving up?", "retries"),
    ("When does text generation end?", "tokens"),
    ("How many dimensions do the sentence vectors have?", "embedding-model"),
    ("How do I run a large offline batch and gather the outputs?", "jobs"),
]

# The key fact each question's answer must state: a phrase from its document, any one of the
# alternatives, matched case-insensitively (bench/rag_answers.py, tests/transformers_pre/test_answers.py).
FACTS: dict[str, tuple[str, ...]] = {
    "broker": ("offset",),
    "dlq": ("kzero.dlq", "dead-letter", "dead letter"),
    "exactly-once": ("read_committed", "transaction", "atomic"),
    "scale-zero": ("cold start", "removes every replica"),
    "cold-start": ("cached", "memory-map", "safetensors"),
    "batching": ("forward pass", "grouped"),
    "readiness": ("weights are loaded", "warm-up"),
    "milvus": ("lite", "local file"),
    "chunking": ("two hundred and fifty", "250"),
    "citations": ("numbered", "citations"),
    "tracing": ("traceparent", "trace id"),
    "metrics": ("latency", "queue depth", "batch size"),
    "gpu-nodes": ("toleration", "taint", "nvidia.com/gpu"),
    "security": ("non-root", "read-only", "seccomp", "capabilities"),
    "keda": ("keda",),
    "strimzi": ("strimzi",),
    "openai": ("compatible", "unchanged"),
    "grpc": ("open inference protocol", "version two", "grpc"),
    "cloudevents": ("specversion",),
    "backpressure": ("pause",),
    "retries": ("jitter", "exponential", "retry-after"),
    "tokens": ("maximum number", "stop string"),
    "embedding-model": ("384",),
    "jobs": ("json lines", "job id"),
}


def holds(text: str, doc_id: str) -> bool:
    """Whether ``text`` states the key fact of ``doc_id``'s question."""
    lowered = text.lower()
    return any(fact in lowered for fact in FACTS[doc_id])
