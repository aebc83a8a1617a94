"""--replicas N, --ray-address: one server spread over several engine replicas with Ray Serve
(docs/scale-out.md). `launch` starts Ray and the replicas, `replica` is an engine, `gateway` is the
app of this process, and `hop` carries a connection's ASGI events between the two.

- Replicas: N Serve applications, `live-diffusion-0` to `-{N-1}`, each one `EngineReplica` deployment
  with one replica (one GPU, or a CPU share without GPUs). A replica runs the very app of the
  single-process server (`create_app`: sessions, worker, pipeline, batching across its users), driven
  over deployment handles instead of a socket. Serve restarts a replica that dies.
- This process: uvicorn on --host and --port as always (the same websocket transport, origin checks
  and logs), with the `Gateway` in front. It pins each user to one replica on the user's first
  request, websocket or stream or viewer token, in whichever order they come (the replica with the
  fewest users; one of them is full: "Server is full" as ever), and forwards the ASGI events of each
  of the user's connections to that replica and back. Health and metrics gather the replicas'.

Why not Serve's own HTTP proxy: it cannot pin a user's websocket and stream to one replica without
reading private request internals, it hides a replica's death from the users (their sockets drop
without a word) and it runs uvicorn with its own settings.

Flow control across the hop: the gateway reads a client's messages as the replica takes them in (an
inbox of `INBOX_SIZE` events), and a replica sends at most `WINDOW` events ahead of what the gateway
has passed on to the client, so a slow client or viewer never piles frames up in between.
"""
