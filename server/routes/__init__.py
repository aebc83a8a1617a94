"""The routes of the server's app, one router per concern: `live` (a user's websocket, streams and
viewer links), `status` (settings, queue, health, metrics) and `process` (the one-shot API). Each reads
the app's `LiveServer` through `live_server`."""
