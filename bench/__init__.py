"""Benchmarks of the transfer service against the baselines users compare it with.

``python -m bench`` starts its own redis-server, PostgreSQL database and
``serve`` processes on loopback, measures the replay engine, the WebSocket
and HTTP paths and idle-socket memory, and writes ``bench/results.json``,
a table and a chart. docs/benchmarks.md records a run and explains the
figures.
"""
