"""The kernel every kzero server and client shares: errors and their HTTP/gRPC codes, the KServe server
wrapper (access, limits, spans, metrics, readiness), the predictor client and its retries, request
validation, the v2 and OpenAI wire layers, and CloudEvents over HTTP. Imports only ``events`` and
``observability``."""
