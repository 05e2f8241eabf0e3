"""A client for a running ComfyUI's HTTP/websocket API (what `prunevid submit` drives). Standard library only: it
imports neither ComfyUI, torch nor any extra package, so `pip install --no-deps` is enough on a machine that only
drives a remote server.

    api.py        the server's endpoints (ComfyClient), following a queued prompt to its end (run), terminal display
    workflow.py   API-format workflows: find, read, patch widgets, read answers and stats out of the outputs
    submit.py     the `prunevid submit` command
    websocket.py  a small RFC 6455 websocket client
    errors.py     ComfyError and its kinds
"""
