"""`llama-chat serve`: an OpenAI-compatible HTTP API over the batch scheduler.

`protocol` checks request bodies and builds response objects; `api` holds the Starlette
routes. The scheduler (`inference.batch`) and the chat templates (`inference.chat`) hold
everything that is not HTTP. Like the TUI, this is an `app`: it never imports kernels.
"""
