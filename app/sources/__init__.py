"""Sources: collections filled from where the data lives (S3, allowed local folders), sharded over the workers."""
