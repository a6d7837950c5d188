"""Live dispatch: the job an order rides in, and a notification for every order event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from server.db import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- The job (one pickup run, possibly a bundle) an assigned order belongs to.
ALTER TABLE orders ADD COLUMN job_id text;
ALTER TABLE orders ADD CONSTRAINT orders_job_with_driver CHECK ((job_id IS NULL) = (driver_id IS NULL));

-- Every front-door process LISTENs here and forwards events to the customers
-- following the order; order_events stays the source of truth for replays.
CREATE FUNCTION order_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', json_build_object(
        'order_id', NEW.order_id, 'seq', NEW.seq, 'type', NEW.type, 'status', NEW.status,
        'actor', NEW.actor, 'at', NEW.at, 'payload', NEW.payload, 'customer_id',
        (SELECT customer_id FROM orders WHERE id = NEW.order_id))::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_notify();
"""

DOWNGRADE = r"""
DROP TRIGGER order_events_notify ON order_events;
DROP FUNCTION order_events_notify();
ALTER TABLE orders DROP CONSTRAINT orders_job_with_driver;
ALTER TABLE orders DROP COLUMN job_id;
"""


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(DOWNGRADE)
