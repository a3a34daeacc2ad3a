"""What enters the store: catalog files and their import, usage files and SQL sources."""
