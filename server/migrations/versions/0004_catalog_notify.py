"""Catalog change notifications: per-process menu caches and nearby replicas stay fresh.

Every change that can alter a menu response or a nearby search is announced on
the ``catalog_changes`` channel, after commit, as ``<kind>:<restaurant id>``:

* ``r:<id>`` a restaurant was inserted, updated or deleted
* ``m:<id>`` one of its menu items was inserted, updated or deleted
* ``o:<id>`` its count of active orders may have changed (an order placed,
  cancelled or delivered)
* ``*`` everything may have changed (TRUNCATE)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from server.db import run_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION catalog_notify_restaurant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('catalog_changes', 'r:' || OLD.id);
    ELSE
        PERFORM pg_notify('catalog_changes', 'r:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER restaurants_catalog_notify AFTER INSERT OR UPDATE OR DELETE ON restaurants
    FOR EACH ROW EXECUTE FUNCTION catalog_notify_restaurant();

-- A row of a restaurant's menu or orders changed: announce '<kind>:<restaurant id>' (kind = TG_ARGV[0]).
CREATE FUNCTION catalog_notify_by_restaurant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('catalog_changes', TG_ARGV[0] || ':' || OLD.restaurant_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('catalog_changes', TG_ARGV[0] || ':' || NEW.restaurant_id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER menu_items_catalog_notify AFTER INSERT OR UPDATE OR DELETE ON menu_items
    FOR EACH ROW EXECUTE FUNCTION catalog_notify_by_restaurant('m');

-- Only changes that move an order in or out of "active" (not cancelled, not delivered).
CREATE TRIGGER orders_catalog_notify_insert_delete AFTER INSERT OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION catalog_notify_by_restaurant('o');
CREATE TRIGGER orders_catalog_notify_update AFTER UPDATE ON orders
    FOR EACH ROW WHEN (
        OLD.restaurant_id IS DISTINCT FROM NEW.restaurant_id
        OR (NOT OLD.cancelled AND OLD.courier_status <> 'delivered')
           IS DISTINCT FROM (NOT NEW.cancelled AND NEW.courier_status <> 'delivered'))
    EXECUTE FUNCTION catalog_notify_by_restaurant('o');

CREATE FUNCTION catalog_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('catalog_changes', '*');
    RETURN NULL;
END
$$;
CREATE TRIGGER restaurants_catalog_notify_truncate AFTER TRUNCATE ON restaurants
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_notify_all();
CREATE TRIGGER menu_items_catalog_notify_truncate AFTER TRUNCATE ON menu_items
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_notify_all();
CREATE TRIGGER orders_catalog_notify_truncate AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_notify_all();
"""

DOWNGRADE = r"""
DROP TRIGGER orders_catalog_notify_truncate ON orders;
DROP TRIGGER menu_items_catalog_notify_truncate ON menu_items;
DROP TRIGGER restaurants_catalog_notify_truncate ON restaurants;
DROP FUNCTION catalog_notify_all();
DROP TRIGGER orders_catalog_notify_update ON orders;
DROP TRIGGER orders_catalog_notify_insert_delete ON orders;
DROP TRIGGER menu_items_catalog_notify ON menu_items;
DROP FUNCTION catalog_notify_by_restaurant();
DROP TRIGGER restaurants_catalog_notify ON restaurants;
DROP FUNCTION catalog_notify_restaurant();
"""


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(DOWNGRADE)
