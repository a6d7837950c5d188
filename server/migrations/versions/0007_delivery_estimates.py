"""Delivery estimates: an order's promise and current estimate, and the estimate each event was written with.

``orders.promise`` is the first estimate given (at placement), kept as it was;
``orders.eta`` the latest (``dispatch.eta.Estimate.to_json``). Every estimate
given is an ``estimate`` event in ``order_events`` (so it reaches the customer's
socket and the audit trail), and every event row carries the estimate current
when it was written. Rows before this migration have none.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import importlib.util
from pathlib import Path

from server.db import run_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE orders ADD COLUMN promise jsonb, ADD COLUMN eta jsonb;
ALTER TABLE order_events ADD COLUMN eta jsonb;

-- The notification carries every column of the event (so this is the last migration to restate it for a new
-- column), and whose order it is.
CREATE OR REPLACE FUNCTION order_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', (to_jsonb(NEW) || jsonb_build_object(
        'customer_id', (SELECT customer_id FROM orders WHERE id = NEW.order_id)))::text);
    RETURN NEW;
END
$$;
"""


def _previous_notify() -> str:
    """Migration 0006's notification function, as 0006 created it."""
    spec = importlib.util.spec_from_file_location("migration_0006", Path(__file__).with_name("0006_event_tracks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UPGRADE[module.UPGRADE.index("CREATE OR REPLACE FUNCTION"):]


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(_previous_notify())
    run_sql("ALTER TABLE order_events DROP COLUMN eta; ALTER TABLE orders DROP COLUMN promise, DROP COLUMN eta;")
