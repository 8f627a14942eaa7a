"""Plain helpers shared by tests and bench; fixtures stay in conftest files and tests/plugins.

assertions  the error envelope, Prometheus samples
waiting     eventually() / eventually_async(): the one poll-until-true loop
settings    make_settings, TEST_SECRET, empty_postgres, in-process apps (BuildClient...)
uploads     PNG bytes, stored-file rows and objects, the storage parametrization
processes   the one process harness: free ports, process groups, readiness, stop, log tails
servers     throwaway PostgreSQL and Redis servers, require_server
workers     a real Celery worker, the real-worker stack and task waits
apis        real `app api` processes (system tests) and their client helpers
live        the app served by uvicorn in-process, WebSocket/SSE clients
cli         the `app` command: path, environment, one run
smtp, certs, factories  an SMTP sink, test CAs, API data factories
queries     counting the SQL statements a request costs

Nothing here imports a test module, a conftest or another tests package (.importlinter).
"""
