"""Several nodes as one: the registry (memory or Redis), routing, the inter-node link, the edge."""
