"""The pure core: value conversion, naming, schema inference, rows, change records and DDL.

Nothing in this package opens a connection or imports boto3 or psycopg's connection layer (``psycopg.sql`` only
composes text). Sources and the target sit around it in ``podyn_py.source`` and ``podyn_py.target``.
"""
