"""Answers from stored embeddings: label sets, scoring, predictions, classify, search.

label_sets (files -> LabelSet) -> scoring (label matrix; stored vectors x matrix) ->
predictions (staged parts) -> classify_run (the `classify` command); search (FAISS).
May import: errors, config, progress, prefetch, model, store. Scoring never decodes an
image: only ``search`` (an image query) imports ``ingest``.
"""
