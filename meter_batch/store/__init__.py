"""The store on disk: what is committed, how to write it safely, how to read it back.

layout (names) -> records (named rows and entries) -> schema (Arrow) -> commit (lock,
manifest, the commit point) -> write / read (parts) -> vectors -> index (FAISS) ->
catalog (DuckDB views) -> verify. ``rebuild_index`` is the `rebuild-index` command.
May import: errors, config, faults, model.identity. Never torch or open_clip (analysts'
`query` and `verify` must stay light); faiss only where the index is touched.
"""
