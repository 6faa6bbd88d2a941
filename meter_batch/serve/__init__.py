"""`meter-batch serve`: the store behind a small local HTTP service, for searches without
loading torch and the model each time (live_store: the store as of its newest commit;
app: the routes; serve_run: the runner)."""
