"""The `edge-trl` command line (installed as `edge_trl.cli`)."""
