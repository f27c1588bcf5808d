"""Support shared by the test suite and the benchmarks (installed with the project, for dev).

processes  free_port(), wait_until(), ServerProcess (start, wait until ready, stop),
           leftover_processes()
smtp       SmtpSink: a real SMTP server on loopback that keeps (or counts) the mails
servers    migrate() and Gunicorn: our service as production runs it
faults     a PostgreSQL cluster and a Redis of their own to stop, freeze and restart, an
           SMTP server that never answers, a small tmpfs: the fault-injection tests'
           dependencies
sydent     a real Sydent 2.6.1 in its cached virtualenv, and replication between peers
"""
