"""The store on disk: what is committed, how to write it safely, how to read it back.

layout (names) -> records (named rows and entries) -> schema (Arrow) -> commit (lock,
manifest, the commit point) -> write / read (parts) -> vectors -> index (FAISS) ->
catalog (DuckDB views) -> verify. ``rebuild_index`` is the `rebuild-index` command.
Imports: errors, config, faults, model.identity (the layers of .importlinter allow no
more than those and progress, prefetch). Never torch or open_clip (analysts' `query` and
`verify` must stay light); faiss only in index.py and what uses the index.
"""
