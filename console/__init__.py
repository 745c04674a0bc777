"""The ops console: a Starlette app of server-rendered pages the web process mounts at /ops."""
