"""Failure kinds read back from the store: the kind column's text, and whether it is retried."""

from __future__ import annotations

from meter_batch.ingest.changes import Standing
from meter_batch.store.records import FailureKind, decoder_fault


def test_a_decoder_fault_is_stored_as_decode_error_and_read_back_as_retried() -> None:
    message = decoder_fault("process died (signal 11)")
    assert message == "the decoder process died (signal 11)"
    assert FailureKind.DECODER_FAULT.stored == "decode_error"
    assert FailureKind.of_stored("decode_error", message) is FailureKind.DECODER_FAULT
    assert FailureKind.DECODER_FAULT.retried


def test_corrupt_data_and_broken_files_are_not_retried_the_rest_is() -> None:
    corrupt = FailureKind.of_stored("decode_error", "ValueError: broken data stream")
    assert corrupt is FailureKind.DECODE_ERROR and not FailureKind.DECODE_ERROR.retried
    kept = {kind.stored for kind in FailureKind if not kind.retried}
    assert kept == {"unidentified", "truncated", "decode_error"}
    retried = {kind.stored for kind in FailureKind if kind.retried}
    assert retried == {"decode_error", "too_large", "unsupported_format", "vanished",
                       "unstable", "permission_denied", "unreadable"}  # fmt: skip
    for kind in FailureKind:
        if kind is not FailureKind.DECODER_FAULT:
            assert FailureKind.of_stored(kind.stored, "some message") is kind


def test_an_unknown_kind_is_none_and_its_file_is_retried() -> None:
    assert FailureKind.of_stored("exploded", "") is None  # as 717bb43 retried such rows
    assert Standing(1, 2, "run", None).retried
    assert not Standing(1, 2, "run", FailureKind.TRUNCATED).retried
