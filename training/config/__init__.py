"""Run configs: the typed schema, loading from YAML and --set, which trainer a config is for, help."""
