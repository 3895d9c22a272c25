"""kzero's Kubernetes manifests, rendered from one validated deploy config (``python -m manifests``)."""
