"""The local certificate authority and the server certificate it signs."""
