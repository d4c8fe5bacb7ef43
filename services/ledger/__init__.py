"""The usage ledger: every admitted request's record, written once to PostgreSQL.

Quota appends each settled record to its shard's Redis Stream; ledger replicas
read the streams through one consumer group (consumer.py), insert each batch
idempotently with its hourly rollup in one statement (store.py), and only then
acknowledge and delete the entries. server.py serves `UsageService` over it and
report.py is the `meshgate usage` client. See docs/ledger.md.
"""
