"""Status events carry both tracks of the order: ``kitchen_status`` and ``courier_status`` after the event.

The customer-facing ``status`` alone stays ``driver_assigned`` while the kitchen
prepares; protocol v2's ``status`` frames carry both tracks (issue 16, item 7).
Events recorded before this migration have NULL tracks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from server.db import run_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE order_events ADD COLUMN kitchen_status text, ADD COLUMN courier_status text;

CREATE OR REPLACE FUNCTION order_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', json_build_object(
        'order_id', NEW.order_id, 'seq', NEW.seq, 'type', NEW.type, 'status', NEW.status,
        'kitchen_status', NEW.kitchen_status, 'courier_status', NEW.courier_status,
        'actor', NEW.actor, 'at', NEW.at, 'payload', NEW.payload, 'customer_id',
        (SELECT customer_id FROM orders WHERE id = NEW.order_id))::text);
    RETURN NEW;
END
$$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION order_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', json_build_object(
        'order_id', NEW.order_id, 'seq', NEW.seq, 'type', NEW.type, 'status', NEW.status,
        'actor', NEW.actor, 'at', NEW.at, 'payload', NEW.payload, 'customer_id',
        (SELECT customer_id FROM orders WHERE id = NEW.order_id))::text);
    RETURN NEW;
END
$$;
ALTER TABLE order_events DROP COLUMN kitchen_status, DROP COLUMN courier_status;
"""


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(DOWNGRADE)
