"""Fine-tuning: jobs that train a model on the user's pairs and register it as a servable alias."""
