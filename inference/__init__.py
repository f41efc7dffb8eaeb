"""Put a trained model to use: batch inference over shards in a Ray Data actor pool (embed, classify,
filter, caption) and single queries in the driver (search, ask). Nothing here trains."""
