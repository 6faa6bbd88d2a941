"""Commands around the product: benchmarks, sample and synthetic images, the demo,
fine-tuning. Only the CLI imports this package; it may import everything below it.
"""
