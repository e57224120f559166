"""`neva serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) on the engine's step API.

    app.py          routes (/v1/chat/completions, /v1/models, /health, /metrics), OpenAI-shaped errors, serve()
    protocol.py     the request body: fields, types, ranges, the conversation's roles
    chat.py         a chat request -> the engine's Request (prompt, images, sampling)
    images.py       data: URLs (and remote URLs when allowed) decoded within size limits
    engine_loop.py  the one thread that steps the engine for every connection
    responses.py    the response bodies and server-sent events
    metrics.py      Prometheus text for /metrics
"""
