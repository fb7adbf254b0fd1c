"""Reference pages of the docs site generated from the code at build time: settings and HTTP API."""
