"""Operating the router: A/B and shadow reports, drift monitoring, decision-log upkeep and the
documents rendered from the config. Reads the decision log; never on the request path."""
