"""What the API shows about whom: a restaurant's owner account is not shown to customers (issue 13, item 9)."""

import random

from tests.server.helpers import add_item, make_restaurant


def owner_fields(value) -> list:
    """Every ``owner`` / ``owner_sub`` key anywhere in a JSON value."""
    if isinstance(value, dict):
        found = [k for k in value if k in ("owner", "owner_sub")]
        return found + [f for v in value.values() for f in owner_fields(v)]
    if isinstance(value, list):
        return [f for v in value for f in owner_fields(v)]
    return []


async def test_customer_view_lacks_owner_id(as_role):
    owner, admin = as_role("restaurant"), as_role("admin")
    customer, driver, other_restaurant = as_role("customer"), as_role("driver"), as_role("restaurant")
    where = (random.uniform(-50, -40), random.uniform(60, 80))  # a patch of ocean of this test's own
    rest = await make_restaurant(owner, latitude=where[0], longitude=where[1])
    await add_item(owner, rest["id"])
    assert rest["owner"] == owner.sub  # the owner sees its own account on what it wrote

    for viewer in (customer, driver, other_restaurant):
        one = await viewer.get(f"/v1/restaurants/{rest['id']}")
        menu = await viewer.get(f"/v1/restaurants/{rest['id']}/menu")
        near = await viewer.get("/v1/restaurants/nearby", params={"lat": where[0], "lng": where[1]})
        assert one.status_code == menu.status_code == near.status_code == 200
        assert [item["id"] for item in near.json()["items"]] == [rest["id"]]
        for response in (one, menu, near):
            assert owner_fields(response.json()) == [], (viewer.sub, response.json())
            assert owner.sub not in response.text

    for privileged in (owner, admin):
        r = await privileged.get(f"/v1/restaurants/{rest['id']}")
        assert r.status_code == 200 and r.json()["owner"] == owner.sub
