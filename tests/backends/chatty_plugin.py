"""A plug-in that prints on import, as some libraries do (a banner, and JSON
without its newline): the worker's startup line must still reach the pool."""

print("chatty plug-in: loading... done", flush=True)
print('{"event": "banner"}', end="", flush=True)
