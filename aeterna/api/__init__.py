"""What users talk to: the control socket, the HTTP endpoints, status; over a read-only view."""
