import random
import uuid

from dispatch.geo import haversine_m
from tests.server.helpers import add_item, make_restaurant, restaurant_body

# A private patch of ocean so other tests' restaurants never show up in these searches.
ORIGIN = (-30.0 + random.uniform(-5, 5), -20.0 + random.uniform(-5, 5))


async def test_onboard_update_and_ownership(as_role):
    owner, stranger, admin = as_role("restaurant"), as_role("restaurant"), as_role("admin")
    rest = await make_restaurant(owner, cuisine_tags=["Thai", "noodles"])
    assert rest["owner"] == owner.sub and rest["cuisine_tags"] == ["thai", "noodles"]
    assert rest["open_now"] is True and len(rest["h3_cell"]) == 15

    r = await stranger.patch(f"/v1/restaurants/{rest['id']}", json={"name": "Mine now"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await stranger.post(f"/v1/restaurants/{rest['id']}/menu/items", json={"name": "x", "price_cents": 1})
    assert r.status_code == 403

    moved = await owner.patch(f"/v1/restaurants/{rest['id']}", json={"latitude": 41.9, "prep_minutes": 20})
    assert moved.status_code == 200, moved.text
    assert moved.json()["location"]["lat"] == 41.9 and moved.json()["h3_cell"] != rest["h3_cell"]
    assert (await admin.patch(f"/v1/restaurants/{rest['id']}", json={"is_open": False})).json()["open_now"] is False

    r = await owner.post("/v1/restaurants", json=restaurant_body(owner_sub="someone-else"))
    assert r.status_code == 403
    r = await admin.post("/v1/restaurants", json=restaurant_body(owner_sub=owner.sub))
    assert r.status_code == 201 and r.json()["owner"] == owner.sub
    r = await as_role("customer").post("/v1/restaurants", json=restaurant_body())
    assert r.status_code == 403


async def test_menu_crud_and_status(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    a = await add_item(owner, rest["id"], "Pad thai", 1100, description="rice noodles")
    b = await add_item(owner, rest["id"], "Spring rolls", 600)
    r = await owner.patch(f"/v1/restaurants/{rest['id']}/menu/items/{b['id']}", json={"available": False})
    assert r.status_code == 200 and r.json()["available"] is False
    menu = (await customer.get(f"/v1/restaurants/{rest['id']}/menu")).json()
    assert [i["name"] for i in menu["items"]] == ["Pad thai", "Spring rolls"]
    assert menu["status"] == {"open_now": True, "prep_minutes": 12, "active_orders": 0}
    assert (await owner.delete(f"/v1/restaurants/{rest['id']}/menu/items/{a['id']}")).status_code == 200
    assert (await owner.delete(f"/v1/restaurants/{rest['id']}/menu/items/{a['id']}")).status_code == 404
    menu = (await customer.get(f"/v1/restaurants/{rest['id']}/menu")).json()
    assert [i["name"] for i in menu["items"]] == ["Spring rolls"]
    other = await make_restaurant(owner)
    r = await owner.patch(f"/v1/restaurants/{other['id']}/menu/items/{b['id']}", json={"price_cents": 1})
    assert r.status_code == 404
    assert (await customer.get("/v1/restaurants/999999999/menu")).status_code == 404


async def test_nearby_matches_brute_force_with_pagination(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rng = random.Random(7)
    tag = "t" + uuid.uuid4().hex[:8]
    made = []
    for i in range(40):
        lat = ORIGIN[0] + rng.uniform(-0.05, 0.05)
        lng = ORIGIN[1] + rng.uniform(-0.05, 0.05)
        radius = rng.choice([1500, 3000, 8000])
        body = dict(latitude=lat, longitude=lng, delivery_radius_m=radius, cuisine_tags=[tag] + (["vegan"] if i % 3 == 0 else []))
        made.append(await make_restaurant(owner, name=f"Place {i} {'Sushi' if i % 4 == 0 else 'Deli'}", **body))
    q_lat, q_lng, radius = ORIGIN[0] + 0.01, ORIGIN[1] - 0.01, 4000

    def expected(pred=lambda r: True):
        rows = []
        for r in made:
            d = haversine_m(q_lat, q_lng, r["location"]["lat"], r["location"]["lng"])
            if d <= min(radius, r["delivery_radius_m"]) and pred(r):
                rows.append((d, r["id"]))
        return [rid for _, rid in sorted(rows)]

    async def search(**params):
        ids, cursor, pages = [], None, 0
        while True:
            query = {"lat": q_lat, "lng": q_lng, "radius_m": radius, "cuisine": tag, "limit": 4, **params}
            if cursor:
                query["cursor"] = cursor
            r = await customer.get("/v1/restaurants/nearby", params=query)
            assert r.status_code == 200, r.text
            page = r.json()
            distances = [x["distance_m"] for x in page["items"]]
            assert distances == sorted(distances)
            ids += [x["id"] for x in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                return ids, pages

    ids, pages = await search()
    assert ids == expected() and len(ids) > 4 and pages == -(-len(ids) // 4)
    ids, _ = await search(cuisine="vegan")
    assert ids == expected(lambda r: "vegan" in r["cuisine_tags"]) and ids
    ids, _ = await search(q="sushi")
    assert ids == expected(lambda r: "Sushi" in r["name"])
    closed = made[0]
    await owner.patch(f"/v1/restaurants/{closed['id']}", json={"is_open": False})
    ids, _ = await search(open_now="true")
    assert ids == [i for i in expected() if i != closed["id"]]


async def test_nearby_name_filter_escapes_wildcards(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    lat, lng = ORIGIN[0] + 0.3, ORIGIN[1] + 0.3
    await make_restaurant(owner, name="100% Burgers", latitude=lat, longitude=lng)
    await make_restaurant(owner, name="1000 Burgers", latitude=lat, longitude=lng)
    r = await customer.get("/v1/restaurants/nearby", params={"lat": lat, "lng": lng, "q": "100%"})
    assert [x["name"] for x in r.json()["items"]] == ["100% Burgers"]
