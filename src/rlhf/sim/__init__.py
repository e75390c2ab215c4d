"""The embedded world: data and tasks generated in code, so nothing is downloaded."""
