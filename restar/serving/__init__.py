"""Serving: the TorchServe archive, the local server and its gateway, replicas, the production follower,
and the JSON request parser the handler uses."""
