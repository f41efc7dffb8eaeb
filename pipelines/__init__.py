"""The Ray Data layer: shard sources, robust tar reading, decode/augment/tokenize stages and
shard tools. Never imports training/."""
