"""The operator's tools: the ``aimd-redis`` command, the read-only inspector
behind ``status`` and ``check``, the Prometheus exporter, the ACL rule."""
