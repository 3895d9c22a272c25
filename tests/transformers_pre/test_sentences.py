from __future__ import annotations

from transformers_pre.sentences import content_words, first_repeat, overlap, repeated_ngrams, sentences

PASSAGE = ("# Dlq\n\nTopic: kafka.\n\nRequests that keep failing are written to kzero.dlq with their error. "
           "Nothing is silently dropped there.\n- A list item counts as its own sentence")


def test_sentences_leave_out_headings_and_fragments_and_keep_dotted_names() -> None:
    assert sentences(PASSAGE) == [
        "Requests that keep failing are written to kzero.dlq with their error.",
        "Nothing is silently dropped there.",
        "- A list item counts as its own sentence",
    ]
    assert sentences("Too short.") == []


def test_overlap_counts_content_words_found_in_the_passages() -> None:
    assert content_words("The DLQ is kzero.dlq [1].") == {"dlq", "kzero.dlq"}
    assert overlap("Failing requests go to kzero.dlq [1].", [PASSAGE]) == 3 / 4  # all but "go"
    assert overlap("Use kzero.sleep() on idle GPUs.", [PASSAGE]) == 0.0
    assert overlap("[1]", [PASSAGE]) == 0.0


def test_first_repeat_finds_the_second_occurrence_of_an_ngram() -> None:
    text = "The topic kzero.dlq is used. The topic kzero.dlq is used again."
    assert first_repeat(text, 4) == text.index("The topic", 1)
    assert first_repeat(text, 6) is None
    assert first_repeat("a b c d e f", 4) is None


def test_repeated_ngrams_counts_distinct_repeated_sequences() -> None:
    assert repeated_ngrams("[1] # Asking a question [1] # Asking a question", 4) == 1
    assert repeated_ngrams("one two three four five one two three four five", 4) == 2
    assert repeated_ngrams("Offsets let a restarted worker resume where it stopped.", 4) == 0
