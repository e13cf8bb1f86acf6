"""The API's Redis transport: pipelined asyncio connections (one per server, one per primary on a cluster)."""
