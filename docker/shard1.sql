-- The sample schema, shard 1 of 3, from 100000 orders.
-- Rendered by parallel_connection.sample.init_sql: do not edit.
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS customers;
CREATE TABLE customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    country text
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    status text,
    amount numeric(12, 2),
    quantity integer,
    weight double precision,
    paid boolean,
    ordered_at timestamptz,
    ship_date date,
    note text,
    tags text[],
    payload jsonb,
    ref uuid
);
CREATE INDEX orders_customer_id ON orders (customer_id);
INSERT INTO customers
SELECT c, 'customer ' || c, (ARRAY['NL', 'DE', 'FR', 'US', NULL])[c % 5 + 1]
FROM generate_series(1, 5000) AS c;
INSERT INTO orders
SELECT g,
       ((g * 7919) % 5000 + 1),
       CASE WHEN g % 97 = 0 THEN NULL
            ELSE (ARRAY['new', 'paid', 'shipped', 'cancelled'])[g % 4 + 1] END,
       ((g * 37) % 100000) / 100.0,
       CASE WHEN g % 53 = 0 THEN NULL ELSE g % 10 + 1 END,
       (g % 1000) / 7.0,
       CASE WHEN g % 41 = 0 THEN NULL ELSE g % 3 = 0 END,
       timestamptz '2024-01-01 00:00:00+00' + (g % 100000) * interval '1 minute',
       date '2024-01-01' + (g % 365),
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END,
       ARRAY['t' || (g % 5), 't' || (g % 3)],
       jsonb_build_object('g', g, 'even', g % 2 = 0),
       md5(g::text)::uuid
FROM generate_series(1, 100000) AS g
WHERE ((g * 7919) % 5000 + 1) % 3 = 1 OR 1 < 0;
VACUUM ANALYZE orders;
VACUUM ANALYZE customers;
