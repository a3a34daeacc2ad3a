"""Where things are kept: the engine, the tables and their migrations, locks, roles, the
catalog read back for the close, and the written documents on disk."""
