"""`medicosam serve`: one SAM on a GPU for many annotators, over HTTP (protocol `/v1`, docs/server.md).

`config` is torch- and fastapi-free (the `medicosam` command reads its options at start); `state`
holds the model, the shared embedding cache, uploads and sessions; `app` is the FastAPI app. Only
this subpackage imports fastapi.
"""
