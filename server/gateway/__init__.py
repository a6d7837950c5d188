"""The front door's live side: sockets in this process, cell actors in Ray, events from Postgres.

One :class:`Gateway` per front-door process. It

* batches GPS fixes per cell and pushes each batch to its cell actor in one
  Ray call every ``gps_flush_s`` (never one call per fix; a cell still busy
  with its last batch gets the next one, coalesced, when it is done);
* long-polls every cell it has drivers in for messages to them (offers,
  assignments, cancellations) and writes them to the drivers' sockets;
* routes drivers' replies to the cell that holds their offer or job, and
  hands an idle driver over when it crosses into another cell;
* forwards order status events (Postgres ``LISTEN order_events``: every
  front door hears every event) to the customers following the order,
  without gaps (a missing sequence number is fetched from ``order_events``;
  the listening connection reconnects when lost, then fills every followed
  order from the table: ``server.listener``);
* publishes the assigned driver's position (latest wins, at most one per
  ``position_interval_s`` per order) on the broker (``server.broker``:
  in memory for one process, Redis for several), which brings it to the
  front doors whose customers follow that order;
* announces each driver's new socket on the broker, so its older socket on
  any front door is closed: a driver has one live session in the whole fleet;
* opens cells only where the deployment serves and within its cap: a fix that
  jumps further than any vehicle goes, or lands outside the service area, or
  would open a cell past ``max_cells``, is refused and changes nothing; an order
  is admitted (or refused) before it is placed. Idle cells retire themselves
  (``actors.cell.CellRetired``); the directory forgets them, and the next fix
  or order opens them anew.

Sockets are represented by :class:`Outbox` objects; a slow consumer loses
positions, never status events, and never slows anyone else. An outbox is
bounded by bytes and by the age of its oldest unsent frame: past either, the
socket is closed with 1013 and the client resumes (``after_seq``).
"""

from server.gateway.cells import cell_gone_errors, cell_placement
from server.gateway.core import LISTEN_START_WAIT_S, Gateway
from server.gateway.drivers import ANSWERS_KEPT, DRIVERS_REMEMBERED, DriverLink, remember
from server.gateway.feed import GAP_FILL_DEADLINE_S, CustomerLink, unix_seconds
from server.gateway.outbox import Outbox
from server.gateway.params import GatewayParams

__all__ = ["ANSWERS_KEPT", "DRIVERS_REMEMBERED", "GAP_FILL_DEADLINE_S", "LISTEN_START_WAIT_S", "CustomerLink",
           "DriverLink", "Gateway", "GatewayParams", "Outbox", "cell_gone_errors", "cell_placement", "remember",
           "unix_seconds"]
