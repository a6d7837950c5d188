"""Catalog, customers, drivers, orders and the append-only order audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from server.db import run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE restaurants (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_sub           text NOT NULL,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    cuisine_tags        text[] NOT NULL DEFAULT '{}',
    address             text NOT NULL CHECK (length(address) BETWEEN 1 AND 500),
    latitude            double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude           double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    -- H3 resolution 9 cell of (latitude, longitude): the nearby-search prefilter.
    h3_cell             bigint NOT NULL,
    prep_minutes        integer NOT NULL CHECK (prep_minutes BETWEEN 1 AND 240),
    -- {"mon": [["11:00", "22:00"]], ...} in local time; NULL means always open.
    opening_hours       jsonb,
    timezone            text NOT NULL DEFAULT 'UTC',
    is_open             boolean NOT NULL DEFAULT true,
    delivery_radius_m   integer NOT NULL CHECK (delivery_radius_m BETWEEN 100 AND 50000),
    delivery_fee_cents  integer NOT NULL CHECK (delivery_fee_cents BETWEEN 0 AND 100000),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX restaurants_h3_cell ON restaurants (h3_cell);
CREATE INDEX restaurants_owner ON restaurants (owner_sub);

CREATE TABLE menu_items (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    restaurant_id   bigint NOT NULL REFERENCES restaurants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description     text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    price_cents     integer NOT NULL CHECK (price_cents BETWEEN 0 AND 10000000),
    available       boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX menu_items_restaurant ON menu_items (restaurant_id, id);

CREATE TABLE customers (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE drivers (
    id          text PRIMARY KEY,
    vehicle     text NOT NULL CHECK (vehicle IN ('foot', 'bicycle', 'scooter', 'car')),
    capacity    integer NOT NULL CHECK (capacity BETWEEN 1 AND 10),
    rating      numeric(3, 2) CHECK (rating BETWEEN 1 AND 5),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id         text NOT NULL REFERENCES customers (id),
    restaurant_id       bigint NOT NULL REFERENCES restaurants (id),
    idempotency_key     text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request_hash        text NOT NULL,
    -- Snapshot of what was bought, at the prices the database held at placement.
    items               jsonb NOT NULL,
    subtotal_cents      bigint NOT NULL CHECK (subtotal_cents >= 0),
    delivery_fee_cents  integer NOT NULL CHECK (delivery_fee_cents >= 0),
    total_cents         bigint NOT NULL CHECK (total_cents = subtotal_cents + delivery_fee_cents),
    dropoff_lat         double precision NOT NULL CHECK (dropoff_lat BETWEEN -90 AND 90),
    dropoff_lng         double precision NOT NULL CHECK (dropoff_lng BETWEEN -180 AND 180),
    dropoff_address     text NOT NULL DEFAULT '',
    notes               text NOT NULL DEFAULT '',
    -- Lifecycle (dispatch/lifecycle.py): two tracks, a cancelled flag, and the derived status.
    status              text NOT NULL CHECK (status IN ('placed', 'accepted', 'preparing', 'ready',
                            'driver_assigned', 'at_restaurant', 'picked_up', 'delivered', 'cancelled')),
    kitchen_status      text NOT NULL CHECK (kitchen_status IN ('placed', 'accepted', 'preparing', 'ready')),
    courier_status      text NOT NULL CHECK (courier_status IN ('unassigned', 'assigned',
                            'at_restaurant', 'picked_up', 'delivered')),
    cancelled           boolean NOT NULL DEFAULT false,
    driver_id           text REFERENCES drivers (id),
    -- Optimistic concurrency: every change bumps it; order_events.seq equals it.
    version             integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    placed_at           timestamptz NOT NULL DEFAULT now(),
    ready_estimate_at   timestamptz NOT NULL,
    ready_at            timestamptz,
    assigned_at         timestamptz,
    picked_up_at        timestamptz,
    delivered_at        timestamptz,
    cancelled_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, idempotency_key),
    CHECK ((courier_status = 'unassigned') = (driver_id IS NULL)),
    CHECK (courier_status NOT IN ('picked_up', 'delivered') OR kitchen_status = 'ready'),
    CHECK (NOT (cancelled AND courier_status IN ('picked_up', 'delivered'))),
    CHECK (cancelled = (status = 'cancelled'))
);
CREATE INDEX orders_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_restaurant ON orders (restaurant_id, id DESC);
CREATE INDEX orders_driver ON orders (driver_id, id DESC) WHERE driver_id IS NOT NULL;
CREATE INDEX orders_active ON orders (restaurant_id)
    WHERE NOT cancelled AND courier_status <> 'delivered';

CREATE TABLE order_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES orders (id),
    seq         integer NOT NULL CHECK (seq >= 1),
    type        text NOT NULL,
    status      text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    actor       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, seq)
);

-- The audit trail is append-only: history is never rewritten.
CREATE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER order_events_no_update BEFORE UPDATE OR DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();
CREATE TRIGGER order_events_no_truncate BEFORE TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_events_append_only();

-- Whether a restaurant takes orders at instant `at`: its open flag and its
-- weekly hours in its own time zone (spans end at most at "24:00").
CREATE FUNCTION restaurant_open_at(is_open boolean, hours jsonb, tz text, at timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT is_open AND (hours IS NULL OR EXISTS (
        SELECT 1
        FROM jsonb_array_elements(hours -> to_char(at AT TIME ZONE tz, 'dy')) AS span
        WHERE to_char(at AT TIME ZONE tz, 'HH24:MI') >= span ->> 0
          AND to_char(at AT TIME ZONE tz, 'HH24:MI') < span ->> 1))
$$;
"""

DOWNGRADE = r"""
DROP FUNCTION restaurant_open_at(boolean, jsonb, text, timestamptz);
DROP TABLE order_events;
DROP FUNCTION order_events_append_only();
DROP TABLE orders;
DROP TABLE drivers;
DROP TABLE customers;
DROP TABLE menu_items;
DROP TABLE restaurants;
"""


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(DOWNGRADE)
