#!/usr/bin/env python
"""Drive one browser session through a running gnr_daemon, start to finish.

Connects with the usual settings (GNR_DAEMON_* variables, environment.xml,
defaults), so run it next to ``gnrdaemon start``:

    python scripts/session_demo.py            # or: --host 127.0.0.1 --port 40404

Each step prints what the register holds afterwards. The site is named
``demo_session`` and is removed at the end.
"""

import argparse
import sys
import time

from gnr_daemon import DaemonClient


def main():
    parser = argparse.ArgumentParser(description="Run one browser session through gnr_daemon.")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--socket")
    options = parser.parse_args()
    client = DaemonClient(host=options.host, port=options.port, socket=options.socket)

    # 1. The web site registers itself, with a dump file inside the daemon's state directory.
    client.addSiteRegister("demo_session", storage_path="demo_session.pik")
    site = client.site("demo_session")
    site.setConfiguration(cleanup={"page_max_age": 600, "connection_max_age": 7200})

    # 2. A browser connects as a guest and opens a tab.
    site.new_connection("conn1", user="guest_conn1", user_ip="127.0.0.1", browser_name="Firefox")
    site.new_page("page1", connection_id="conn1", user="guest_conn1", pagename="index.py",
                  relative_url="/index", data={"pageArgs": {"table": "invoice"}})
    print("after opening a tab:", site.counters())

    # 3. The tab pings; nothing is pending, so the envelope carries only `result`.
    envelope = site.handle_ping("page1", _lastUserEventTs=None)
    print("quiet ping data changes:", envelope.getItem("dataChanges"))

    # 4. The server pushes a value to the tab; the next ping delivers it once.
    site.set_datachange("page1", "gnr.message", value="Invoice 42 saved", reason="demo",
                        register_name="page")
    envelope = site.handle_ping("page1")
    print("pushed value:", envelope.getItem("dataChanges.sc_0"),
          envelope.getAttr("dataChanges.sc_0", "change_path"))

    # 5. The tab subscribes to a table; a database event reaches it as a data change.
    site.subscribeTable("page1", "shop.invoice", True)
    tables = site.filter_subscribed_tables(["shop.invoice", "shop.customer"], register_name="page")
    print("tables with subscribers:", tables)
    site.notifyDbEvents(dbeventsDict={"shop.invoice": [{"pkey": "42"}]}, origin_page_id=None,
                        dbevent_reason="save", register_name="page")
    envelope = site.handle_ping("page1")
    print("database change path:", envelope.getAttr("dataChanges.sc_0", "change_path"))

    # 6. The user logs in: the connection and its pages move to the real user.
    site.change_connection_user("conn1", user="alice", user_id="U1", user_name="Alice",
                                user_tags="admin")
    print("alice's pages:", [page["register_item_id"] for page in site.pages(user="alice")])

    # 7. The state is saved; the register restarts and restores it.
    client.siteregister_restart("demo_session")
    print("after restart:", site.counters())

    # 8. The tab closes; with cascade, the connection goes when its last page goes.
    site.drop_page("page1", cascade=True)
    print("after closing the tab:", site.counters())

    # 9. Cleanup evicts what is stale (nothing is, here) and the site is removed.
    print("cleanup claimed:", site.claim_cleanup(0), "evicted connections:", site.cleanup())
    client.siteregister_stop("demo_session")
    client.close()
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"done in {time.perf_counter() - started:.2f} s")
    sys.exit(status)
