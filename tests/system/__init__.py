"""System tests: real `app api` processes on loopback, sharing PostgreSQL and Redis."""
