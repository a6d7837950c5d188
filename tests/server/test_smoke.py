async def test_health(as_role):
    api = as_role(None)
    r = await api.get("/v1/health")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}
