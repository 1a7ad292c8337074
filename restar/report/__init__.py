"""Reports on a model: the release report, the ranking proxy A/B (rank_eval) and contradicting stars."""
