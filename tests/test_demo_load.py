"""A small run of benchmarks/load_test_demo.py: 20 clients at once, 2 requests each, twice over."""

import importlib.util

from test_cli import ROOT, serve_demo, tiny_model  # noqa: F401  (tiny_model is a fixture)

spec = importlib.util.spec_from_file_location("load_test_demo", ROOT / "benchmarks" / "load_test_demo.py")
load_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load_test)


def test_twenty_concurrent_clients_are_all_served_in_bounded_time_with_flat_memory(tiny_model, tmp_path):  # noqa: F811
    image = load_test.IMAGE.read_bytes()
    with serve_demo(tiny_model, log=tmp_path / "demo.log") as (url, server):
        api = f"{url}/gradio_api"
        # a request over the timeout counts as failed, so every round is bounded in time
        rounds = [load_test.run_round(api, image, clients=20, requests=2, timeout=120, pid=server.pid)
                  for _ in range(2)]
    for r in rounds:
        assert r.failures == [] and len(r.latencies) == 40
    assert rounds[1].rss_mb - rounds[0].rss_mb < 20  # nothing piles up request after request
