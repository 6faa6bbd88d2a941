"""The model: which one made an embedding, loading it from local files, running it.

identity (what makes two embeddings comparable; no torch) -> loading (open_clip from
local files only) -> encoder (uint8 pixels -> unit vectors; texts -> unit vectors).
May import: errors, config. In the layers (.importlinter) the package straddles the
store: ``identity`` sits below it (the store records identities, without torch),
``loading`` and ``encoder`` above it (they may use the store; today they need nothing).
"""
