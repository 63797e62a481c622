"""Running the daemon in production: service-manager integration (systemd) and monitoring."""
