"""The index database: schema and migrations, files, images and results, the job queue and its leases,
workers, search by words and by meaning, copy between backends, export. May import the base only:
what embeds a query is handed in (``vectors.Encoder``), so the index never loads a model."""
