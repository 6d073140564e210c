"""The client's adapters: drivers of the pure ClientConnection."""
