"""The models: Florence-2 (loading, the engine variants, any task on demand, idle unload) and the
sentence-embedding model. May import the base (``daemon.config``, ``errors``, ``files``, ``imaging``,
``results``, ``tasks``) and nothing else of ``daemon``: a model knows no index, file or service."""
