"""A synthetic metropolitan catalog for ``bench.catalog``: restaurants, menus and customers.

The metro is a 40 km x 40 km box centred on Chicago's Loop, with Lake
Michigan cut out. Density is skewed the way real delivery catalogs are: a
dense downtown, a dozen neighbourhood centres, and a thin uniform spread over
the rest of the land. Customers (search points and drop-offs) are drawn from
the same model, since demand follows supply.

Everything here is deterministic for a given seed, so the loader processes can
each build their own shard of menu items without shipping rows between
processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dispatch.cells import cell_of

CENTRE = (41.8781, -87.6298)  # the Loop
HALF_SIDE_KM = 20.0
KM_PER_DEG_LAT = 111.32

#: (neighbourhood, lat, lng, spread sigma in km, share of restaurants)
HOTSPOTS: tuple[tuple[str, float, float, float, float], ...] = (
    ("Loop / River North", 41.888, -87.632, 2.0, 0.30),
    ("Wicker Park", 41.909, -87.677, 1.2, 0.06),
    ("Lincoln Park", 41.922, -87.649, 1.3, 0.06),
    ("Lakeview", 41.940, -87.655, 1.3, 0.05),
    ("West Loop / Pilsen", 41.857, -87.660, 1.3, 0.05),
    ("Uptown / Andersonville", 41.972, -87.666, 1.2, 0.04),
    ("Logan Square", 41.923, -87.708, 1.2, 0.04),
    ("Chinatown", 41.852, -87.632, 0.6, 0.03),
    ("Hyde Park", 41.795, -87.594, 1.0, 0.03),
    ("Evanston", 42.045, -87.688, 1.2, 0.03),
    ("Oak Park", 41.885, -87.785, 1.2, 0.03),
    ("Little Village", 41.845, -87.715, 1.2, 0.03),
)
#: The rest of the restaurants are spread uniformly over the land in the box.
UNIFORM_SHARE = 1.0 - sum(h[4] for h in HOTSPOTS)

#: Lake Michigan's shore as (lat, lng of the shoreline); points east of it are water.
SHORELINE = (
    (41.69, -87.525), (41.76, -87.555), (41.80, -87.580), (41.84, -87.605), (41.87, -87.614),
    (41.90, -87.620), (41.93, -87.628), (41.96, -87.640), (42.00, -87.655), (42.06, -87.675),
)

#: cuisine -> (share of restaurants, median item price in dollars, dishes)
CUISINES: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "american": (0.12, 13.0, ("Cheeseburger", "Club Sandwich", "Mac and Cheese", "Buffalo Wings", "Cobb Salad",
                              "Fried Chicken", "Meatloaf", "Onion Rings", "Milkshake", "Fries")),
    "pizza": (0.11, 15.0, ("Deep Dish Pizza", "Thin Crust Pizza", "Calzone", "Garlic Bread", "Caesar Salad",
                           "Pepperoni Pizza", "Margherita", "Tavern-Style Pizza", "Breadsticks", "Soda")),
    "mexican": (0.12, 11.0, ("Al Pastor Tacos", "Carnitas Burrito", "Chicken Quesadilla", "Elote", "Guacamole",
                             "Tamales", "Enchiladas Verdes", "Horchata", "Chips and Salsa", "Torta")),
    "chinese": (0.09, 12.0, ("Kung Pao Chicken", "Beef Chow Fun", "Mapo Tofu", "Pork Dumplings", "Fried Rice",
                             "Hot and Sour Soup", "Egg Rolls", "General Tso's Chicken", "Lo Mein", "Bao")),
    "italian": (0.07, 18.0, ("Spaghetti Carbonara", "Lasagna", "Chicken Parmesan", "Penne Arrabbiata", "Tiramisu",
                             "Risotto", "Italian Beef", "Bruschetta", "Gnocchi", "Cannoli")),
    "thai": (0.06, 13.0, ("Pad Thai", "Green Curry", "Pad See Ew", "Tom Yum", "Papaya Salad", "Drunken Noodles",
                          "Massaman Curry", "Spring Rolls", "Mango Sticky Rice", "Thai Iced Tea")),
    "indian": (0.05, 14.0, ("Chicken Tikka Masala", "Saag Paneer", "Lamb Vindaloo", "Garlic Naan", "Samosas",
                            "Chana Masala", "Biryani", "Dal Makhani", "Mango Lassi", "Tandoori Chicken")),
    "japanese": (0.05, 16.0, ("Salmon Nigiri", "Spicy Tuna Roll", "Tonkotsu Ramen", "Chicken Katsu", "Miso Soup",
                              "Gyoza", "Edamame", "Unagi Don", "California Roll", "Udon")),
    "mediterranean": (0.05, 13.0, ("Chicken Shawarma", "Falafel Wrap", "Hummus", "Gyro Plate", "Tabbouleh",
                                   "Lamb Kebab", "Baba Ganoush", "Spanakopita", "Baklava", "Pita")),
    "breakfast": (0.05, 11.0, ("Pancakes", "Eggs Benedict", "Breakfast Burrito", "French Toast", "Omelette",
                               "Hash Browns", "Bagel", "Waffles", "Latte", "Fruit Cup")),
    "korean": (0.03, 15.0, ("Bibimbap", "Bulgogi", "Korean Fried Chicken", "Kimchi Jjigae", "Japchae",
                            "Tteokbokki", "Galbi", "Kimbap", "Mandu", "Pajeon")),
    "vietnamese": (0.03, 12.0, ("Pho Tai", "Banh Mi", "Bun Cha", "Spring Rolls", "Com Tam", "Bun Bo Hue",
                                "Vermicelli Bowl", "Vietnamese Coffee", "Banh Xeo", "Goi Cuon")),
    "polish": (0.03, 12.0, ("Pierogi", "Kielbasa", "Bigos", "Placki", "Golabki", "Zurek", "Paczki",
                            "Schabowy", "Nalesniki", "Barszcz")),
    "bbq": (0.03, 17.0, ("Rib Tips", "Pulled Pork", "Brisket", "Hot Links", "Coleslaw", "Cornbread",
                         "Baked Beans", "Smoked Chicken", "Burnt Ends", "Sweet Tea")),
    "seafood": (0.03, 21.0, ("Fish and Chips", "Shrimp Po'Boy", "Clam Chowder", "Lobster Roll", "Grilled Salmon",
                             "Fried Calamari", "Crab Cakes", "Oysters", "Fish Tacos", "Shrimp Basket")),
    "vegan": (0.03, 13.0, ("Buddha Bowl", "Beyond Burger", "Tofu Scramble", "Cauliflower Wings", "Kale Salad",
                           "Lentil Soup", "Jackfruit Tacos", "Acai Bowl", "Vegan Brownie", "Smoothie")),
    "dessert": (0.02, 7.0, ("Cheesecake", "Gelato", "Cupcake", "Brownie", "Donut", "Frozen Custard",
                            "Cookie", "Churros", "Pie Slice", "Affogato")),
    "sandwiches": (0.03, 11.0, ("Italian Beef", "Turkey Club", "Reuben", "BLT", "Grilled Cheese",
                                "Chicago Hot Dog", "Maxwell Street Polish", "Meatball Sub", "Cuban", "Chips")),
}
MODIFIERS = ("Classic", "Spicy", "House", "Large", "Family-Size", "Small", "Deluxe", "Chef's", "Grilled",
             "Crispy", "Combo", "Half", "Signature", "Smoked", "Loaded")
INGREDIENTS = ("garlic", "cilantro", "lime", "chili", "basil", "scallion", "sesame", "parmesan", "pickled onion",
               "avocado", "mozzarella", "ginger", "tomato", "mushroom", "pepper jack", "herb butter", "aioli")
NAME_WORDS = ("Lucky", "Golden", "Lakeside", "Windy City", "Maria's", "Halsted", "Little", "Uncle Joe's", "Blue",
              "North Side", "South Side", "Corner", "Second City", "Prairie", "Red", "Old Town", "Grand", "Union")
STREETS = ("N Clark St", "W Division St", "S Halsted St", "N Milwaukee Ave", "W North Ave", "N Broadway",
           "W Armitage Ave", "S Michigan Ave", "W Chicago Ave", "N Lincoln Ave", "W Cermak Rd", "W 18th St",
           "N Damen Ave", "W Fullerton Ave", "N Sheridan Rd", "S Cottage Grove Ave", "W Madison St")
DELIVERY_RADII_M = (3000, 4000, 5000, 6000, 8000)
DELIVERY_FEES_CENTS = (0, 199, 299, 399, 499)
TIMEZONE = "America/Chicago"

RESTAURANT_COPY_COLUMNS = (
    "owner_sub", "name", "cuisine_tags", "address", "latitude", "longitude", "h3_cell", "prep_minutes",
    "opening_hours", "timezone", "is_open", "delivery_radius_m", "delivery_fee_cents",
)
ITEM_COPY_COLUMNS = ("restaurant_id", "name", "description", "price_cents", "available")


def deg_per_km(lat: float) -> tuple[float, float]:
    """Degrees of (latitude, longitude) per kilometre at ``lat``."""
    return 1.0 / KM_PER_DEG_LAT, 1.0 / (KM_PER_DEG_LAT * math.cos(math.radians(lat)))


def metro_bounds() -> tuple[float, float, float, float]:
    """(min_lat, max_lat, min_lng, max_lng) of the metro box."""
    dlat, dlng = deg_per_km(CENTRE[0])
    return (CENTRE[0] - HALF_SIDE_KM * dlat, CENTRE[0] + HALF_SIDE_KM * dlat,
            CENTRE[1] - HALF_SIDE_KM * dlng, CENTRE[1] + HALF_SIDE_KM * dlng)


def on_land(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    """Which points are inside the box and west of the lake shore."""
    min_lat, max_lat, min_lng, max_lng = metro_bounds()
    shore = np.interp(lat, [p[0] for p in SHORELINE], [p[1] for p in SHORELINE])
    return (lat >= min_lat) & (lat <= max_lat) & (lng >= min_lng) & (lng <= max_lng) & (lng < shore)


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidate points from the density mixture (some may fall in the lake)."""
    shares = np.array([h[4] for h in HOTSPOTS] + [UNIFORM_SHARE])
    component = rng.choice(len(shares), size=n, p=shares / shares.sum())
    min_lat, max_lat, min_lng, max_lng = metro_bounds()
    lat = rng.uniform(min_lat, max_lat, n)
    lng = rng.uniform(min_lng, max_lng, n)
    for index, (_, h_lat, h_lng, sigma_km, _) in enumerate(HOTSPOTS):
        mask = component == index
        dlat, dlng = deg_per_km(h_lat)
        lat[mask] = h_lat + rng.normal(0.0, sigma_km, mask.sum()) * dlat
        lng[mask] = h_lng + rng.normal(0.0, sigma_km, mask.sum()) * dlng
    return lat, lng


def sample_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on land drawn from the metro's restaurant density (rejection sampling)."""
    lats, lngs, have = [], [], 0
    while have < n:
        lat, lng = _draw(rng, int((n - have) * 1.4) + 16)
        keep = on_land(lat, lng)
        lats.append(lat[keep])
        lngs.append(lng[keep])
        have += int(keep.sum())
    return np.concatenate(lats)[:n], np.concatenate(lngs)[:n]


def cuisine_names() -> list[str]:
    return list(CUISINES)


def restaurant_records(seed: int, n: int) -> tuple[list[tuple], np.ndarray]:
    """COPY rows (``RESTAURANT_COPY_COLUMNS``) for ``n`` open restaurants, and each one's cuisine index.

    The H3 cell is computed by :func:`dispatch.cells.cell_of`, as the API does.
    """
    rng = np.random.default_rng(seed)
    lat, lng = sample_points(rng, n)
    names = cuisine_names()
    shares = np.array([CUISINES[c][0] for c in names])
    cuisine = rng.choice(len(names), size=n, p=shares / shares.sum())
    second = rng.choice(len(names), size=n)
    word = rng.integers(0, len(NAME_WORDS), n)
    street = rng.integers(0, len(STREETS), n)
    number = rng.integers(1, 9999, n)
    prep = rng.integers(8, 36, n)
    radius = rng.choice(DELIVERY_RADII_M, size=n, p=[0.15, 0.25, 0.35, 0.15, 0.10])
    fee = rng.choice(DELIVERY_FEES_CENTS, size=n)
    two_tags = rng.random(n) < 0.3
    records = []
    for i in range(n):
        primary = names[cuisine[i]]
        tags = [primary, names[second[i]]] if two_tags[i] and second[i] != cuisine[i] else [primary]
        records.append((
            f"bench-owner-{i % 20000}",
            f"{NAME_WORDS[word[i]]} {primary.replace('_', ' ').title()} #{i}",
            tags,
            f"{number[i]} {STREETS[street[i]]}, Chicago, IL",
            float(lat[i]),
            float(lng[i]),
            cell_of(float(lat[i]), float(lng[i])),
            int(prep[i]),
            None,  # always open: the bench measures the catalog, not opening hours
            TIMEZONE,
            True,
            int(radius[i]),
            int(fee[i]),
        ))
    return records, cuisine


def menu_records(seed: int, restaurant_ids: list[int], cuisine_index: list[int], items_per_restaurant: int) -> list[tuple]:
    """COPY rows (``ITEM_COPY_COLUMNS``) for the menus of ``restaurant_ids``; deterministic per seed."""
    rng = np.random.default_rng(seed)
    names = cuisine_names()
    total = len(restaurant_ids) * items_per_restaurant
    modifier = rng.integers(0, len(MODIFIERS), total)
    dish = rng.integers(0, 10, total)
    first, second = rng.integers(0, len(INGREDIENTS), total), rng.integers(0, len(INGREDIENTS), total)
    spread = rng.lognormal(0.0, 0.45, total)
    available = rng.random(total) >= 0.02  # a few items are sold out
    records = []
    k = 0
    for restaurant_id, c in zip(restaurant_ids, cuisine_index):
        _, median_dollars, dishes = CUISINES[names[c]]
        for _ in range(items_per_restaurant):
            dollars = min(80.0, max(1.5, median_dollars * spread[k]))
            price_cents = int(round(dollars * 2)) * 50 - 1  # x.49 or x.99
            records.append((
                restaurant_id,
                f"{MODIFIERS[modifier[k]]} {dishes[dish[k]]}",
                f"{dishes[dish[k]]} with {INGREDIENTS[first[k]]} and {INGREDIENTS[second[k]]}",
                price_cents,
                bool(available[k]),
            ))
            k += 1
    return records


@dataclass(frozen=True)
class Projection:
    """An equirectangular projection to metres around the metro centre (for neighbour look-ups)."""

    lat0: float = CENTRE[0]

    def xy(self, lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
        dlat, dlng = deg_per_km(self.lat0)
        return np.column_stack(((lng - CENTRE[1]) / dlng * 1000.0, (lat - CENTRE[0]) / dlat * 1000.0))
