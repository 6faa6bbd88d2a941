"""Images in: the `encode` command, from a folder walk to committed embeddings.

scan (the walk) -> changes (vs the store) -> decode (+ pixels) in workers, plain JPEGs
on the GPU (gpu_decode) -> encode_loop (decoding overlapped with the model) ->
encode_run (writes, commits, the run summary).
May import: errors, config, progress, faults, prefetch, model, store.
"""
