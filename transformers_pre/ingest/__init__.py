"""Document ingestion for RAG: read files, cut token-counted chunks, batch-embed, upsert into Milvus.

``readers`` (files -> ``Document``), ``chunking`` (``Chunker``), ``pipeline`` (``ingest``, ``delete``);
``python -m transformers_pre.ingest`` is the command line.
"""
