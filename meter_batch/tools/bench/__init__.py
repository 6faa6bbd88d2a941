"""`meter-batch bench encode|classify|rescan`: benchmarks that print their figures (never
timed tests). One module per benchmark; ``common`` holds the synthetic store's parts."""
