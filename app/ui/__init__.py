"""The dashboard at /ui: HTML pages whose JavaScript reads the JSON API with the key kept in the browser session."""
