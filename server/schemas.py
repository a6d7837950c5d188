"""Request bodies and query strings, validated with pydantic before anything touches the database."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

MAX_ID = 2**63 - 1
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")

Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
MAX_LATITUDE = 90
MAX_LONGITUDE = 180
Latitude = Annotated[float, Field(ge=-MAX_LATITUDE, le=MAX_LATITUDE, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-MAX_LONGITUDE, le=MAX_LONGITUDE, allow_inf_nan=False)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text500 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=40)]
Cents = Annotated[int, Field(ge=0, le=10_000_000, strict=True)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_hours(hours: dict[str, list[tuple[str, str]]] | None):
    if hours is None:
        return None
    for day, spans in hours.items():
        if day not in WEEKDAYS:
            raise ValueError(f"unknown weekday {day!r}; use {', '.join(WEEKDAYS)}")
        if len(spans) > 8:
            raise ValueError(f"{day}: at most 8 opening spans a day")
        for opens, closes in spans:
            if not (_HHMM.match(opens) and _HHMM.match(closes)):
                raise ValueError(f"{day}: times are HH:MM, 00:00 to 24:00")
            if opens >= closes:
                raise ValueError(f"{day}: a span must close after it opens (split spans past midnight)")
    return hours


def _check_timezone(tz: str | None):
    if tz is None:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    return tz


class RestaurantIn(Body):
    name: Name
    address: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    latitude: Latitude
    longitude: Longitude
    cuisine_tags: list[Tag] = Field(default_factory=list, max_length=20)
    prep_minutes: Annotated[int, Field(ge=1, le=240, strict=True)] = 15
    opening_hours: dict[str, list[tuple[str, str]]] | None = None
    timezone: str = "UTC"
    is_open: bool = True
    delivery_radius_m: Annotated[int, Field(ge=100, le=50_000, strict=True)] | None = None
    delivery_fee_cents: Annotated[int, Field(ge=0, le=100_000, strict=True)] | None = None
    #: Only an admin may onboard a restaurant on behalf of an account.
    owner_sub: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    _hours = field_validator("opening_hours")(_check_hours)
    _tz = field_validator("timezone")(_check_timezone)


class RestaurantPatch(Body):
    name: Name | None = None
    address: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    cuisine_tags: list[Tag] | None = Field(default=None, max_length=20)
    prep_minutes: Annotated[int, Field(ge=1, le=240, strict=True)] | None = None
    opening_hours: dict[str, list[tuple[str, str]]] | None = None
    timezone: str | None = None
    is_open: bool | None = None
    delivery_radius_m: Annotated[int, Field(ge=100, le=50_000, strict=True)] | None = None
    delivery_fee_cents: Annotated[int, Field(ge=0, le=100_000, strict=True)] | None = None

    _hours = field_validator("opening_hours")(_check_hours)
    _tz = field_validator("timezone")(_check_timezone)


class MenuItemIn(Body):
    name: Name
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""
    price_cents: Cents
    available: bool = True


class MenuItemPatch(Body):
    name: Name | None = None
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    price_cents: Cents | None = None
    available: bool | None = None


class LatLng(Body):
    lat: Latitude
    lng: Longitude


class OrderLineIn(Body):
    item_id: Id
    quantity: Annotated[int, Field(ge=1, le=50, strict=True)] = 1


class OrderIn(Body):
    restaurant_id: Id
    items: list[OrderLineIn] = Field(min_length=1, max_length=50)
    dropoff: LatLng
    dropoff_address: Text500 = ""
    notes: Text500 = ""


class ReadyRevision(Body):
    """A new estimate from the kitchen: ready this many minutes, or seconds, from now (exactly one)."""

    ready_in_minutes: Annotated[int, Field(ge=0, le=240, strict=True)] | None = None
    ready_in_seconds: Annotated[int, Field(ge=0, le=240 * 60, strict=True)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.ready_in_minutes is None) == (self.ready_in_seconds is None):
            raise ValueError("give exactly one of ready_in_minutes and ready_in_seconds")
        return self

    @property
    def seconds(self) -> int:
        return self.ready_in_seconds if self.ready_in_seconds is not None else 60 * self.ready_in_minutes


class CancelIn(Body):
    reason: Text500 = ""


class DriverProfileIn(Body):
    vehicle: Literal["foot", "bicycle", "scooter", "car"]
    capacity: Annotated[int, Field(ge=1, le=10, strict=True)] = 1


class Query(BaseModel):
    """Query strings: strings are coerced to the declared types; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NearbyQuery(Query):
    lat: Latitude
    lng: Longitude
    radius_m: Annotated[int, Field(ge=1, le=50_000)] = 3000
    cuisine: Tag | None = None
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None
    open_now: bool = False
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class PageQuery(Query):
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class RestaurantOrdersQuery(PageQuery):
    active: bool = True
