"""kassa's server: gRPC servicers over the core, group commit, config and the `kassa` command."""
