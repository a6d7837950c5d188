"""Request bodies, query strings and path ids, validated with pydantic before anything touches the database.

Every input model is strict: a JSON (or msgpack) value must already have the
declared type. An integer is never a bool, float or string; a number may be
an integer or a float, never a bool or string; a bool is ``true``/``false``.
Query strings and path segments are text, so their numbers and flags are read
from ASCII text here (``*Param`` types) and then checked as strictly.

Integers that reach Postgres are bounded by their column: ids are ``bigint``,
sequence numbers ``integer``. Text refuses U+0000, which Postgres cannot store.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

INT4_MAX = 2**31 - 1  # Postgres integer
INT8_MAX = 2**63 - 1  # Postgres bigint
MAX_ID = INT8_MAX
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")
# Python's int() and float() also read other scripts' digits ("١" is 1) and "nan", "inf", "1_0".
_ASCII_INTEGER = re.compile(r"-?[0-9]{1,20}")
_ASCII_NUMBER = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?")


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("may not contain the character U+0000")
    return text


def _read_text(pattern: re.Pattern, convert, problem: str) -> BeforeValidator:
    """Reads a query string's or path's text with ``convert`` when all of it matches ``pattern``; values
    that are not text are left to the strict type."""
    def read(value):
        if isinstance(value, str):
            if not pattern.fullmatch(value):
                raise ValueError(problem)
            return convert(value)
        return value
    return BeforeValidator(read)


_INTEGER_TEXT = _read_text(_ASCII_INTEGER, int, "must be an integer written in ASCII digits")
_NUMBER_TEXT = _read_text(_ASCII_NUMBER, float, "must be a decimal number written in ASCII digits")
_FLAG_TEXT = _read_text(re.compile("true|false"), lambda text: text == "true", "must be true or false")


def Integer(low: int, high: int):
    """An integer in [low, high]: a JSON or msgpack integer, never a bool, float or string."""
    return Annotated[int, Field(ge=low, le=high, strict=True)]


def IntegerParam(low: int, high: int):
    """:func:`Integer` read from a query string or path segment (ASCII digits, optional minus sign)."""
    return Annotated[int, _INTEGER_TEXT, Field(ge=low, le=high, strict=True)]


def Number(low: float, high: float):
    """A finite number in [low, high]: an integer or a float, never a bool or string."""
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False, strict=True)]


def NumberParam(low: float, high: float):
    """:func:`Number` read from a query string (ASCII decimal notation; no nan or inf)."""
    return Annotated[float, _NUMBER_TEXT, Field(ge=low, le=high, allow_inf_nan=False, strict=True)]


def Text(min_length: int = 0, max_length: int = 500, *, strip: bool = True, lower: bool = False):
    """A string of at most ``max_length`` characters (after stripping), without U+0000."""
    return Annotated[
        str,
        StringConstraints(strip_whitespace=strip, to_lower=lower, min_length=min_length, max_length=max_length),
        AfterValidator(_no_nul),
        # The JSON schema (and the fuzz strategies generated from it) knows about U+0000 too.
        Field(strict=True, json_schema_extra={"pattern": "^[^\\x00]*$"}),
    ]


#: A row id (Postgres bigint), in a body or frame / in a path or query string.
Id = Integer(1, INT8_MAX)
IdParam = IntegerParam(1, INT8_MAX)
#: An order event's sequence number (Postgres integer; 0 means "before the first").
EventSeq = Integer(0, INT4_MAX)
EventSeqParam = IntegerParam(0, INT4_MAX)
Flag = Annotated[bool, Field(strict=True)]
FlagParam = Annotated[bool, _FLAG_TEXT, Field(strict=True)]
MAX_LATITUDE = 90
MAX_LONGITUDE = 180
Latitude = Number(-MAX_LATITUDE, MAX_LATITUDE)
Longitude = Number(-MAX_LONGITUDE, MAX_LONGITUDE)
LatitudeParam = NumberParam(-MAX_LATITUDE, MAX_LATITUDE)
LongitudeParam = NumberParam(-MAX_LONGITUDE, MAX_LONGITUDE)
Name = Text(1, 200)
Text500 = Text(0, 500)
Tag = Text(1, 40, lower=True)
Cents = Integer(0, 10_000_000)
#: A nearby page's cursor: the last row's distance (metres) and id.
NEARBY_CURSOR = TypeAdapter(tuple[Number(0, 1e9), Id])
#: An id-ordered page's cursor: the last row's id.
ID_CURSOR = TypeAdapter(tuple[Id])
PATH_ID = TypeAdapter(IdParam)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


#: An opening span ``["HH:MM", "HH:MM"]`` (checked by ``_check_hours``).
Span = Annotated[list[Text(0, 5, strip=False)], Field(min_length=2, max_length=2)]
OpeningHours = dict[Text(0, 3, strip=False), list[Span]]
Address = Text(1, 500)
Description = Text(0, 2000)
Timezone = Text(1, 64, strip=False)
PrepMinutes = Integer(1, 240)
DeliveryRadius = Integer(100, 50_000)
DeliveryFee = Integer(0, 100_000)
PageLimit = IntegerParam(1, 100)
Cursor = Text(0, 200, strip=False)


class RestaurantIn(Body):
    name: Name
    address: Address
    latitude: Latitude
    longitude: Longitude
    cuisine_tags: list[Tag] = Field(default_factory=list, max_length=20)
    prep_minutes: PrepMinutes = 15
    opening_hours: OpeningHours | None = None
    timezone: Timezone = "UTC"
    is_open: Flag = True
    delivery_radius_m: DeliveryRadius | None = None
    delivery_fee_cents: DeliveryFee | None = None
    #: Only an admin may onboard a restaurant on behalf of an account.
    owner_sub: Text(1, 128, strip=False) | None = None

    _hours = field_validator("opening_hours")(_check_hours)
    _tz = field_validator("timezone")(_check_timezone)


class RestaurantPatch(Body):
    name: Name | None = None
    address: Address | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    cuisine_tags: list[Tag] | None = Field(default=None, max_length=20)
    prep_minutes: PrepMinutes | None = None
    opening_hours: OpeningHours | None = None
    timezone: Timezone | None = None
    is_open: Flag | None = None
    delivery_radius_m: DeliveryRadius | None = None
    delivery_fee_cents: DeliveryFee | None = None

    _hours = field_validator("opening_hours")(_check_hours)
    _tz = field_validator("timezone")(_check_timezone)


class MenuItemIn(Body):
    name: Name
    description: Description = ""
    price_cents: Cents
    available: Flag = True


class MenuItemPatch(Body):
    name: Name | None = None
    description: Description | None = None
    price_cents: Cents | None = None
    available: Flag | None = None


class LatLng(Body):
    lat: Latitude
    lng: Longitude


class OrderLineIn(Body):
    item_id: Id
    quantity: Integer(1, 50) = 1


class OrderIn(Body):
    restaurant_id: Id
    items: list[OrderLineIn] = Field(min_length=1, max_length=50)
    dropoff: LatLng
    dropoff_address: Text500 = ""
    notes: Text500 = ""


class ReadyRevision(Body):
    """A new estimate from the kitchen: ready this many minutes, or seconds, from now (exactly one)."""

    ready_in_minutes: Integer(0, 240) | None = None
    ready_in_seconds: Integer(0, 240 * 60) | None = None

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
    capacity: Integer(1, 10) = 1


class Query(BaseModel):
    """Query strings: every value is text, read as its field's type by the ``*Param`` types; unknown keys
    are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NearbyQuery(Query):
    lat: LatitudeParam
    lng: LongitudeParam
    radius_m: IntegerParam(1, 50_000) = 3000
    cuisine: Tag | None = None
    q: Text(1, 100) | None = None
    open_now: FlagParam = False
    limit: PageLimit = 20
    cursor: Cursor | None = None


class PageQuery(Query):
    limit: PageLimit = 20
    cursor: Cursor | None = None


class RestaurantOrdersQuery(PageQuery):
    active: FlagParam = True


class EventsQuery(Query):
    after: EventSeqParam = 0
