"""Erasing a restaurant with its orders: the one deletion the order audit trail allows.

``order_events`` stays append-only (no UPDATE, no TRUNCATE, no DELETE of a
live order's history) except inside a transaction that declared it erases
whole orders (``SET LOCAL hexdispatch.erasing_orders = 'on'``), as
``store.catalog.erase_restaurant`` does to remove a restaurant, its
menu, its finished orders and their events (``DELETE /v1/restaurants/{id}``;
``hexdispatch simulate --cleanup``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from server.db import run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('hexdispatch.erasing_orders', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'order_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""


def upgrade() -> None:
    run_sql(UPGRADE)


def downgrade() -> None:
    run_sql(DOWNGRADE)
