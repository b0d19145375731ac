-- The bundled demo database: a small shop, with the kinds of objects a catalog must handle.
CREATE SCHEMA sales;
CREATE SCHEMA inventory;
CREATE SCHEMA analytics;
COMMENT ON SCHEMA sales IS 'Customers, orders and payments';
COMMENT ON SCHEMA inventory IS 'Products, warehouses and stock levels';
COMMENT ON SCHEMA analytics IS 'Derived reporting objects';

CREATE TABLE sales.customers (
    customer_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   varchar(200) NOT NULL,
    country     char(2),
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sales.customers IS 'People who bought at least once';
COMMENT ON COLUMN sales.customers.email IS 'Login and contact address';

CREATE TABLE inventory.products (
    product_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         varchar(32) NOT NULL UNIQUE,
    title       text NOT NULL,
    price       numeric(10, 2) NOT NULL CHECK (price >= 0),
    tags        text[] NOT NULL DEFAULT '{}',
    attributes  jsonb
);
COMMENT ON TABLE inventory.products IS 'Sellable items';

CREATE TABLE inventory.warehouses (
    warehouse_id integer PRIMARY KEY,
    city         text NOT NULL
);

CREATE TABLE inventory.stock (
    warehouse_id integer NOT NULL REFERENCES inventory.warehouses,
    product_id   bigint NOT NULL REFERENCES inventory.products,
    quantity     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (warehouse_id, product_id)
);
COMMENT ON TABLE inventory.stock IS 'Units on hand per warehouse';

CREATE TABLE sales.orders (
    order_id    bigint GENERATED ALWAYS AS IDENTITY,
    customer_id bigint NOT NULL REFERENCES sales.customers,
    ordered_at  timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    total       numeric(12, 2) NOT NULL,
    PRIMARY KEY (order_id, ordered_at)
) PARTITION BY RANGE (ordered_at);
COMMENT ON TABLE sales.orders IS 'Orders, partitioned by year';
CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');

CREATE TABLE sales.order_lines (
    order_id    bigint NOT NULL,
    ordered_at  timestamptz NOT NULL,
    line_no     smallint NOT NULL,
    product_id  bigint NOT NULL REFERENCES inventory.products,
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10, 2) NOT NULL,
    line_total  numeric(12, 2) GENERATED ALWAYS AS (quantity * unit_price) STORED,
    PRIMARY KEY (order_id, ordered_at, line_no),
    FOREIGN KEY (order_id, ordered_at) REFERENCES sales.orders
);

CREATE TABLE sales.payments (
    payment_id  uuid PRIMARY KEY,
    order_id    bigint NOT NULL,
    ordered_at  timestamptz NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    paid_at     timestamptz,
    FOREIGN KEY (order_id, ordered_at) REFERENCES sales.orders
);

CREATE VIEW sales.customer_orders AS
SELECT c.customer_id, c.email, o.order_id, o.ordered_at, o.total
FROM sales.customers c JOIN sales.orders o USING (customer_id);
COMMENT ON VIEW sales.customer_orders IS 'Orders with their customer';

CREATE MATERIALIZED VIEW analytics.daily_revenue AS
SELECT date_trunc('day', ordered_at) AS day, sum(total) AS revenue, count(*) AS orders
FROM sales.orders GROUP BY 1;
COMMENT ON MATERIALIZED VIEW analytics.daily_revenue IS 'Revenue per day, refreshed nightly';

CREATE FUNCTION sales.order_count(p_customer bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$ SELECT count(*) FROM sales.orders WHERE customer_id = p_customer $$;

INSERT INTO sales.customers (email, full_name, country) VALUES
    ('ada@example.com', 'Ada Lovelace', 'GB'), ('grace@example.com', 'Grace Hopper', 'US');
INSERT INTO inventory.warehouses VALUES (1, 'Leeds'), (2, 'Austin');
INSERT INTO inventory.products (sku, title, price, tags) VALUES
    ('MUG-1', 'Mug', 9.50, '{kitchen}'), ('PEN-2', 'Pen', 1.20, '{office}');
INSERT INTO inventory.stock VALUES (1, 1, 40), (2, 2, 300);
INSERT INTO sales.orders (customer_id, ordered_at, total) VALUES
    (1, '2025-06-01', 19.00), (2, '2026-02-03', 3.60);
REFRESH MATERIALIZED VIEW analytics.daily_revenue;
ANALYZE;
