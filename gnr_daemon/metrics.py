"""Optional Prometheus endpoint of the daemon.

``start_metrics`` needs ``prometheus-client`` (``pip install
'gnr_daemon[prometheus]'``). It wraps the server's request handler, so with
metrics off nothing of this module runs on the request path. Label values
come from closed sets: the ``method`` label is a known method name or
``other``, the ``site`` label a registered site (at most
``MAX_SITE_LABELS`` of them) or ``other``, so a caller cannot create
label values at will.

Exposed series: ``gnrd_requests_total{method,site,status}``,
``gnrd_request_duration_seconds{method}``, ``gnrd_active_tcp_connections``,
``gnrd_sites_total``, ``gnrd_register_pages{site}``,
``gnrd_register_connections{site}``, ``gnrd_register_users{site}``,
``gnrd_cleanup_evictions_total{site,register}`` and
``gnrd_auth_failures_total{reason}``.
"""

import inspect
import logging
import time

from .errors import ConfigurationError

__all__ = ["start_metrics", "known_method_names", "MAX_SITE_LABELS"]

log = logging.getLogger(__name__)

#: Sites beyond this many are counted under the site label ``other``.
MAX_SITE_LABELS = 200


def known_method_names():
    """Return every method name a request can legitimately carry."""
    from .daemon import Daemon
    from .registers.items import REGISTER_CLASSES
    from .registers.remotebag import ALLOWED_OPS
    from .registers.site import SiteRegister

    names = set()
    for cls in (Daemon, SiteRegister, *REGISTER_CLASSES.values()):
        for name, value in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                names.add(name)
    names.update(f"remotebag_{op}" for op in ALLOWED_OPS)
    return frozenset(names)


class MetricsEndpoint:
    """The HTTP endpoint and the instrumentation installed on one server."""

    def __init__(self, server, http_server):
        self._server = server
        self._http_server = http_server

    def stop(self):
        self._http_server.stop(timeout=1)


def start_metrics(server, host, port):
    """Instrument ``server`` and serve its metrics on ``host:port``; return a MetricsEndpoint."""
    try:
        import prometheus_client
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ConfigurationError(
            "--metrics-port needs prometheus-client: pip install 'gnr_daemon[prometheus]'"
        ) from None
    from gevent.pywsgi import WSGIServer

    registry = prometheus_client.CollectorRegistry()
    requests = prometheus_client.Counter(
        "gnrd_requests", "Requests served, by method, site and outcome.",
        ["method", "site", "status"], registry=registry)
    duration = prometheus_client.Histogram(
        "gnrd_request_duration_seconds", "Time to run a request on the daemon.", ["method"],
        registry=registry,
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5))
    connections = prometheus_client.Gauge(
        "gnrd_active_tcp_connections", "Client connections open now.", registry=registry)
    connections.set_function(lambda: len(server._connections))

    methods = known_method_names()
    daemon = server.daemon

    class RegisterCollector:
        def collect(self):
            sites = daemon._site_registers()
            yield GaugeMetricFamily("gnrd_sites_total", "Sites registered.", value=len(sites))
            pages = GaugeMetricFamily("gnrd_register_pages", "Live pages.", labels=["site"])
            conns = GaugeMetricFamily("gnrd_register_connections", "Live connections.",
                                      labels=["site"])
            users = GaugeMetricFamily("gnrd_register_users", "Live users.", labels=["site"])
            evictions = CounterMetricFamily("gnrd_cleanup_evictions",
                                            "Items evicted by cleanup.", labels=["site", "register"])
            for sitename, register in list(sites.items())[:MAX_SITE_LABELS]:
                try:
                    counters = register.counters()
                    evicted = register._cleanup_evictions()
                except Exception:
                    log.exception("metrics: reading site %r failed", sitename)
                    continue
                pages.add_metric([sitename], counters.get("pages", 0))
                conns.add_metric([sitename], counters.get("connections", 0))
                users.add_metric([sitename], counters.get("users", 0))
                for register_name, count in sorted(evicted.items()):
                    evictions.add_metric([sitename, register_name], count)
            yield pages
            yield conns
            yield users
            yield evictions
            failures = CounterMetricFamily("gnrd_auth_failures", "Rejected handshakes and frames.",
                                           labels=["reason"])
            for reason, count in sorted(server.auth_failures_by_reason.items()):
                failures.add_metric([reason], count)
            yield failures

    registry.register(RegisterCollector())
    run_request = server._run_request

    def instrumented_run_request(request):
        method = site = None
        if isinstance(request, tuple) and len(request) == 5:
            site, method = request[1], request[2]
        method_label = method if method in methods else "other"
        if site is None:
            site_label = ""
        elif isinstance(site, str) and site in daemon._sites:
            site_label = site
        else:
            site_label = "other"
        errors, timeouts = server.call_errors, server.call_timeouts
        started = time.perf_counter()
        payload = run_request(request)
        duration.labels(method_label).observe(time.perf_counter() - started)
        if server.call_timeouts != timeouts:
            status = "timeout"
        elif server.call_errors != errors:
            status = "error"
        else:
            status = "ok"
        requests.labels(method_label, site_label, status).inc()
        return payload

    server._run_request = instrumented_run_request
    app = prometheus_client.make_wsgi_app(registry)
    http_server = WSGIServer((host, port), app, log=None, error_log=log)
    http_server.start()
    log.info("Prometheus metrics on http://%s:%d/metrics", host, http_server.server_port)
    return MetricsEndpoint(server, http_server)
