"""TorchServe's `ts.utils` package (only `util` is provided)."""
