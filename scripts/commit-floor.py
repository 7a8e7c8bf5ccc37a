#!/usr/bin/env python3
"""The floor of Kitara's hot-store transaction on a MariaDB server: the statements Kitara
sends for a batch of one-unit orders of one product (the fence, the guarded stock UPDATE,
the orders, their details, the batch's event row, the token), as Kitara sends them
(BEGIN, one multi-statement request, COMMIT), from N plain connections at once, a few
seconds each. What no writer of this schema can beat on that server.

    pip install pymysql
    kitara migrate --database-url mysql://kitara:kitara@127.0.0.1:3306/kitara_floor
    scripts/commit-floor.py 'mysql://kitara:kitara@127.0.0.1:3306/kitara_floor' 1 2 3
    ORDERS_PER_COMMIT=16 scripts/commit-floor.py ...   # bigger batches

It takes store 1's ownership row (epoch 1) and sets product 1's stock high: use a database
of its own, and drop it afterwards.
"""
import os
import sys
import threading
import time
from urllib.parse import urlparse

import pymysql
from pymysql.constants import CLIENT

# What Kitara commits at 16 connections on one hot product, unless told otherwise.
ORDERS_PER_COMMIT = int(os.environ.get("ORDERS_PER_COMMIT", "8"))
SECONDS = 4
EVENT_BODY = os.urandom(300).hex()  # about the size of 8 orders' compressed events


def connect(url):
    u = urlparse(url)
    return pymysql.connect(
        host=u.hostname, port=u.port or 3306, user=u.username, password=u.password or "",
        database=u.path.lstrip("/"), client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True,
    )


def plan(first):
    n = ORDERS_PER_COMMIT
    orders = ", ".join(f"({first + i}, 2, 1, 1, NULL)" for i in range(n))
    details = ", ".join(f"({first + i}, {first + i}, 1, 1)" for i in range(n))
    return (
        "UPDATE kitara_store_owners SET fenced = fenced + 1 WHERE (store_id = 1 AND epoch = 1); "
        f"UPDATE products SET current_stock = current_stock + (CASE id WHEN 1 THEN -{n} END), "
        f"updated_at = CURRENT_TIMESTAMP WHERE current_stock + (CASE id WHEN 1 THEN -{n} END) >= 0 "
        "AND deleted_at IS NULL AND id IN (1); "
        f"INSERT INTO orders (id, buyer_id, quantity, store_id, expires_at) VALUES {orders}; "
        f"INSERT INTO order_details (id, order_id, product_id, quantity) VALUES {details}; "
        "INSERT INTO kitara_events (store_id, seq, last_seq, at_ms, body) VALUES "
        f"(1, {first}, {first + n - 1}, {int(time.time() * 1000)}, X'{EVENT_BODY}'); "
        f"INSERT INTO kitara_commits (token, orders) VALUES ('floor-{first}', {n})"
    )


def main():
    url, *counts = sys.argv[1:]
    setup = connect(url).cursor()
    setup.execute(
        "INSERT INTO kitara_store_owners (store_id, owner, epoch, fenced) VALUES (1, 'floor', 1, 0) "
        "ON DUPLICATE KEY UPDATE owner = 'floor', epoch = 1"
    )
    setup.execute("UPDATE products SET current_stock = 1000000000 WHERE id = 1")
    setup.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM orders")
    next_id = [max(setup.fetchone()[0], 10_000_000)]
    lock = threading.Lock()

    def worker(stop, done, k):
        cursor = connect(url).cursor()
        while not stop.is_set():
            with lock:
                first = next_id[0]
                next_id[0] += ORDERS_PER_COMMIT
            cursor.execute("BEGIN")
            cursor.execute(plan(first))
            while cursor.nextset():
                pass
            cursor.execute("COMMIT")
            done[k] += 1

    for connections in [int(c) for c in counts] or [1, 2, 3]:
        stop, done = threading.Event(), [0] * connections
        threads = [threading.Thread(target=worker, args=(stop, done, k)) for k in range(connections)]
        started = time.time()
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join()
        rate = sum(done) / (time.time() - started)
        print(f"{connections} connection(s): {rate:,.0f} commits/s, "
              f"{rate * ORDERS_PER_COMMIT:,.0f} orders/s at {ORDERS_PER_COMMIT} orders a commit")


if __name__ == "__main__":
    main()
