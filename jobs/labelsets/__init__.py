"""Label-set files (jobs/labelsets), shipped with the package for `meter-batch demo`."""
