"""The application around the memberflow library: the `memberflow` command, the demo, the
in-process runner and the webhook receiver. The core (`memberflow/`) imports none of it."""
