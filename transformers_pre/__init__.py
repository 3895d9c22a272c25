"""The KServe RAG transformer: a chain of async pre/post steps (retrieval, prompt, citations)."""
