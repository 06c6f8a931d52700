"""Results as Arrow columns: the shards' rows read by the ADBC PostgreSQL driver (binary COPY decoded in
C, outside the GIL, every shard at once), given PostgreSQL's types and merged in Arrow.

``read.py`` is the face the connection and cursor call; ``driver.py`` holds the
ADBC connections; ``types.py`` maps PostgreSQL's types to Arrow's (and psycopg2
rows to Arrow, for what the row path answers); ``merge.py`` merges the
shards' tables as one database would have ordered, deduplicated and limited them.
"""
