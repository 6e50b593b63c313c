"""pyops inside other libraries' models: `pyops.integrations.transformers.apply(model)`."""
