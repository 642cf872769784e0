"""Online evaluation: traffic played against a running service, and what it clicked."""
