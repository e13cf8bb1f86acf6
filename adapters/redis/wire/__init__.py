"""The Redis adapter's own transport, on hiredis and the standard library (no redis-py): it reads
:class:`..options.RedisOptions` and raises the store's errors, nothing else of the adapter.

* :mod:`.protocol`: packing, the connect handshake, cluster slots, and the one table of error replies;
* :mod:`.sockets`: TCP keepalive, the TLS context, what socket failures mean, a blocking connect;
* :mod:`.connection` and :mod:`.cluster`: the API's pipelined asyncio connections (one per server, one per
  cluster primary);
* :mod:`.lines`: the bulk pipeline of loads and gc (blocking sockets, replies counted by line).
"""
