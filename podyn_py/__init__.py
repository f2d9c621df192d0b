"""podyn_py: replicate Amazon DynamoDB tables into PostgreSQL (or Citus), then keep them in sync."""

__version__ = "0.1.0"
