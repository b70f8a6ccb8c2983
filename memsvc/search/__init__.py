"""ANN indexes beside the tables: manager, catalog, builds, workers, query log."""
