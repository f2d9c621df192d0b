"""The source edge: reading DynamoDB tables (scan) and their change streams."""
