"""AWS DynamoDB backend: see :mod:`.backend` for the layout and its reasons."""

from precompute.adapters.dynamodb.backend import DynamoDBBackend
from precompute.adapters.dynamodb.reader import DynamoDBReader

__all__ = ["DynamoDBBackend", "DynamoDBReader"]
