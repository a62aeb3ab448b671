"""The web page (``florence-watch serve``) and its templates. An interface: may import the service,
the model, the index, metadata and the base; nothing imports it but ``daemon.cli``."""
