"""`spa serve`: many tasks over one base behind an HTTP API (FastAPI + uvicorn).

Modules, one job each: `settings` (limits and batching knobs), `codec` (request and response
bodies: JSON or safetensors), `batching` (per-task micro-batching of concurrent requests),
`metrics` (Prometheus text), `app` (the FastAPI application over a `spa.tasks.TaskHost`), `cli`
(the `spa serve` sub-command). Importing this package imports nothing heavy; the web stack is
imported by `app` only.
"""
