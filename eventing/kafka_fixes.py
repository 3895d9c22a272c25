"""Fixes for the kafka-python 2.3 transactional-producer bugs that fencing runs into.

A fenced producer (a zombie worker's, see ``eventing.transactions``) must fail its transaction and close.
With kafka-python 2.3.3 it can instead hang or spin forever:

- a TxnOffsetCommit response carrying any error code is read through a misspelt name
  (``errors.CoordinatorNotAvailableError``, a dict, for ``Errors.``); the AttributeError is swallowed by
  the response callback, so ``send_offsets_to_transaction`` waits forever;
- aborting the batches on a fatal or abortable error removes in-flight batches from the per-partition
  queue they were already drained from: the ValueError escapes the sender loop on every turn, the
  batches never complete, the sender thread spins and ``close`` times out.

kafka-python 3.0 fixed both (its ``abort_batches``/``abort_undrained_batches`` are what is
installed here); the project keeps 2.3 (see pyproject.toml).

One more, which 3.0 shares: ``commit_transaction``, ``abort_transaction`` and
``send_offsets_to_transaction`` wait without a bound. A produce request of the transaction that fails with
InvalidProducerEpoch (the zombie's case) leaves the EndTxn request queued behind a batch that never
completes, and the commit waits forever: the worker then hangs, even on SIGTERM. The Java client bounds
these calls by ``max.block.ms`` and raises a timeout; so do the versions installed here, whose
``KafkaTimeoutError`` the caller handles like any failed transaction (the next opening of the
transactional id aborts what was left open). ``install`` is idempotent; the batch fixes do nothing on 3.x.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from kafka import KafkaProducer, version
from kafka.errors import IllegalStateError, KafkaTimeoutError, for_code
from kafka.producer import record_accumulator, transaction_manager

_MARK = "_kzero_fixed"


def install() -> None:
    if not getattr(KafkaProducer, _MARK, False):
        _bound_transactional_waits()
        setattr(KafkaProducer, _MARK, True)
    if not version.__version__.startswith("2.") or getattr(record_accumulator.RecordAccumulator, _MARK, False):
        return
    _fail_transaction_on_offset_commit_errors()
    accumulator = record_accumulator.RecordAccumulator
    accumulator._abort_batches = _abort_batches
    accumulator.abort_undrained_batches = _abort_undrained_batches
    setattr(accumulator, _MARK, True)


def _fail_transaction_on_offset_commit_errors() -> None:
    handler = transaction_manager.TxnOffsetCommitHandler
    original = handler.handle_response

    def handle_response(self: Any, response: Any) -> None:
        try:
            original(self, response)
        except AttributeError:  # only reached with an error code: fail the transaction with that error
            code = next(code for _, partitions in response.topics for _, code in partitions if code)
            self.fatal_error(for_code(code)())

    handler.handle_response = handle_response


def _abort_batches(self: Any, error: Exception) -> None:
    """Abort every incomplete batch, in flight or not (fatal error, forced close)."""
    for batch in self._incomplete.all():
        tp = batch.topic_partition
        with self._tp_lock(tp):
            batch.records.close()
            with suppress(ValueError):  # in flight: drain() already took it off the queue
                self._batches[tp].remove(batch)
        batch.abort(error)
        self.deallocate(batch)


def _abort_undrained_batches(self: Any, error: Exception) -> None:
    """Abort the batches not sent yet (abortable error); those in flight are settled by their response."""
    for batch in self._incomplete.all():
        tp = batch.topic_partition
        with self._tp_lock(tp):
            aborted = not batch.is_done and batch.drained is None
            if aborted:
                batch.records.close()
                self._batches[tp].remove(batch)
        if aborted:
            batch.abort(error)
            self.deallocate(batch)


def _bound_transactional_waits() -> None:
    def bounded(begin: str, what: str) -> Any:
        def call(self: Any, *args: Any) -> None:
            manager = self._transaction_manager
            if not manager:
                raise IllegalStateError(f"cannot {what}: transactions are not enabled")
            result = getattr(manager, begin)(*args)
            self._sender.wakeup()
            if not result.wait(timeout_ms=self.config["max_block_ms"]):
                raise KafkaTimeoutError(f"{what} did not complete within max_block_ms={self.config['max_block_ms']}")

        return call

    KafkaProducer.commit_transaction = bounded("begin_commit", "commit the transaction")
    KafkaProducer.abort_transaction = bounded("begin_abort", "abort the transaction")
    KafkaProducer.send_offsets_to_transaction = bounded(
        "send_offsets_to_transaction", "send the offsets to the transaction")
