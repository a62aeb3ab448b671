"""The running daemon: the pipeline, the watcher, pause, sd_notify, the embedding thread, the runner,
the unit installer, doctor and find. May import the model, the index, metadata and the base; never
the interfaces (``daemon.cli``, ``daemon.web``)."""
