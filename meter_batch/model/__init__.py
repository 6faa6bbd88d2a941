"""The model: which one made an embedding, loading it from local files, running it.

identity (what makes two embeddings comparable; no torch) -> loading (open_clip from
local files only) -> encoder (uint8 pixels -> unit vectors; texts -> unit vectors).
May import: errors, config. Only ``identity`` may be imported by ``store``.
"""
