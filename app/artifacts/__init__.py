"""Files every host of a fleet reads: model folders, batch files (the artifact store)."""
