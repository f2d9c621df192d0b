"""The one-command demo: DynamoDB Local and PostgreSQL started here, sample tables, load, live changes, verify.

``python -m podyn_py.demo`` (``bash scripts/demo.sh`` installs what it needs first). It starts DynamoDB Local and a
PostgreSQL of its own (unless ``--endpoint-url`` / ``--postgres-url`` point at existing ones), creates and fills
tables shaped like the DynamoDB Developer Guide's samples (ProductCatalog, Forum, Thread, Reply), runs
``podyn --schema --data --changes`` against them, makes a few live changes and shows them arrive, verifies the
copy, prints the tables, and stops everything it started.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import click
import psycopg
from psycopg import sql

from podyn_py import verify
from podyn_py.cli import EXIT_DIFFERENCES, EXIT_ERROR, EXIT_OK, EXIT_TABLES_FAILED
from podyn_py.config import AwsSettings, Config, parse_postgres_url, redact
from podyn_py.demo_services import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalDynamoDB, LocalPostgres, local_client
from podyn_py.errors import PodynError
from podyn_py.target import state

log = logging.getLogger(__name__)

SAMPLE_TABLES: dict[str, dict[str, Any]] = {
    "ProductCatalog": {"key": [("Id", "N")]},
    "Forum": {"key": [("Name", "S")]},
    "Thread": {"key": [("ForumName", "S"), ("Subject", "S")]},
    "Reply": {
        "key": [("Id", "S"), ("ReplyDateTime", "S")],
        "gsi": ("PostedBy-Message-Index", [("PostedBy", "S"), ("Message", "S")]),
    },
}


def sample_items(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Items shaped like the Developer Guide's sample data, in DynamoDB's wire format."""
    books = [
        {
            "Id": {"N": str(100 + i)},
            "Title": {"S": f"Book {100 + i} Title"},
            "ISBN": {"S": f"{i}{i}{i}-{i}{i}{i}{i}{i}{i}{i}{i}{i}{i}"},
            "Authors": {"L": [{"S": f"Author{a}"} for a in range(1, rng.randint(1, 3) + 1)]},
            "Price": {"N": str(rng.choice([2, 20, 2000, 19.99]))},
            "Dimensions": {"S": "8.5 x 11.0 x 0.5"},
            "PageCount": {"N": str(rng.randint(100, 900))},
            "InPublication": {"BOOL": rng.random() < 0.7},
            "ProductCategory": {"S": "Book"},
        }
        for i in range(1, 6)
    ]
    bicycles = [
        {
            "Id": {"N": str(200 + i)},
            "Title": {"S": f"{rng.choice([18, 19, 21])}-Bike-{200 + i}"},
            "Description": {"S": f"{200 + i} Description"},
            "BicycleType": {"S": rng.choice(["Road", "Mountain", "Hybrid"])},
            "Brand": {"S": f"Brand-Company {rng.choice('ABC')}"},
            "Price": {"N": str(rng.randint(1, 9) * 100)},
            "Color": {"SS": sorted(rng.sample(["Red", "Black", "Green", "Blue"], rng.randint(1, 3)))},
            "ProductCategory": {"S": "Bicycle"},
        }
        for i in range(1, 6)
    ]
    forums = [
        {
            "Name": {"S": "Amazon DynamoDB"},
            "Category": {"S": "Amazon Web Services"},
            "Threads": {"N": "2"},
            "Messages": {"N": "4"},
            "Views": {"N": "1000"},
        },
        {"Name": {"S": "Amazon S3"}, "Category": {"S": "Amazon Web Services"}},
    ]
    threads = [
        {
            "ForumName": {"S": "Amazon DynamoDB"},
            "Subject": {"S": f"DynamoDB Thread {n}"},
            "Message": {"S": f"DynamoDB thread {n} message"},
            "LastPostedBy": {"S": f"User {'AB'[n % 2]}"},
            "LastPostedDateTime": {"S": f"2015-09-{20 + n}T19:58:22.514Z"},
            "Views": {"N": str(rng.randint(0, 100))},
            "Replies": {"N": "2"},
            "Answered": {"N": str(n % 2)},
            "Tags": {"SS": ["index", "primarykey", "table"][: n + 1]},
        }
        for n in (1, 2)
    ] + [{"ForumName": {"S": "Amazon S3"}, "Subject": {"S": "S3 Thread 1"}, "Message": {"S": "S3 thread 1 message"}}]
    replies = [
        {
            "Id": {"S": f"Amazon DynamoDB#DynamoDB Thread {t}"},
            "ReplyDateTime": {"S": f"2015-09-{15 + 7 * r}T19:58:22.947Z"},
            "Message": {"S": f"DynamoDB Thread {t} Reply {r} text"},
            "PostedBy": {"S": f"User {'AB'[(t + r) % 2]}"},
        }
        for t in (1, 2)
        for r in (1, 2)
    ]
    return {"ProductCatalog": books + bicycles, "Forum": forums, "Thread": threads, "Reply": replies}


def create_sample_tables(client: Any, prefix: str) -> dict[str, str]:
    """Create and fill the sample tables (streams on); returns sample name → table name."""
    names = {}
    rng = random.Random(42)
    for sample, items in sample_items(rng).items():
        shape = SAMPLE_TABLES[sample]
        name = f"{prefix}{sample}"
        attributes = dict(shape["key"])
        params: dict[str, Any] = {
            "TableName": name,
            "KeySchema": [
                {"AttributeName": a, "KeyType": k} for (a, _), k in zip(shape["key"], ("HASH", "RANGE"), strict=False)
            ],
            "BillingMode": "PAY_PER_REQUEST",
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        }
        if "gsi" in shape:
            index, key = shape["gsi"]
            attributes.update(dict(key))
            params["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index,
                    "KeySchema": [
                        {"AttributeName": a, "KeyType": k} for (a, _), k in zip(key, ("HASH", "RANGE"), strict=False)
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ]
        params["AttributeDefinitions"] = [{"AttributeName": a, "AttributeType": t} for a, t in attributes.items()]
        client.create_table(**params)
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
        for start in range(0, len(items), 25):
            client.batch_write_item(
                RequestItems={name: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]}
            )
        names[sample] = name
    return names


def make_live_changes(client: Any, names: dict[str, str]) -> list[str]:
    """A few writes of every kind; returns what they were, for the printout."""
    catalog, forum = names["ProductCatalog"], names["Forum"]
    client.put_item(
        TableName=catalog,
        Item={
            "Id": {"N": "300"},
            "Title": {"S": "Live-Added Scooter"},
            "Price": {"N": "12345678901234567890.5"},
            "ProductCategory": {"S": "Scooter"},
            "Wheels": {"N": "2"},
        },
    )
    client.update_item(
        TableName=catalog,
        Key={"Id": {"N": "101"}},
        UpdateExpression="SET Price = :p, Tags = :t REMOVE Dimensions",
        ExpressionAttributeValues={":p": {"N": "0.99"}, ":t": {"SS": ["sale", "live"]}},
    )
    client.delete_item(TableName=catalog, Key={"Id": {"N": "205"}})
    client.update_item(
        TableName=forum,
        Key={"Name": {"S": "Amazon S3"}},
        UpdateExpression="SET Threads = :n",
        ExpressionAttributeValues={":n": {"S": "one"}},  # a type conflict: goes to Threads_text
    )
    return [
        f"PutItem {catalog} Id=300 (new attribute Wheels, a 21-digit price)",
        f"UpdateItem {catalog} Id=101 (Price 0.99, Tags added, Dimensions removed)",
        f"DeleteItem {catalog} Id=205",
        f"UpdateItem {forum} Name='Amazon S3' (Threads as a string: a type conflict)",
    ]


def print_table(conn: psycopg.Connection[Any], table: str, out: Any, *, where: str = "") -> None:
    cur = conn.execute(sql.SQL("SELECT * FROM {} " + where + " ORDER BY 1, 2").format(sql.Identifier(table)))
    names = [d.name for d in cur.description or []]
    rows = [[_short(v) for v in row] for row in cur.fetchall()]
    widths = [max(len(n), *(len(r[i]) for r in rows)) if rows else len(n) for i, n in enumerate(names)]
    out.write(f"\n{table} ({len(rows)} rows)\n")
    out.write(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + "\n")


def _short(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 28 else text[:25] + "..."


@contextlib.contextmanager
def _services(endpoint_url: str | None, postgres_url: str | None) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        if endpoint_url is None:
            click.echo("starting DynamoDB Local ...")
            endpoint_url = stack.enter_context(LocalDynamoDB()).endpoint_url
        if postgres_url is None:
            click.echo("starting PostgreSQL ...")
            postgres_url = stack.enter_context(LocalPostgres()).url
        yield endpoint_url, postgres_url
        click.echo("\nstopping what the demo started ...")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.2)


#: Called between the end of replication and verification with a PostgreSQL connection, the DynamoDB client and
#: the sample name → table name mapping; tests use it to plant a difference or take a table away.
BeforeVerify = Callable[[psycopg.Connection[Any], Any, dict[str, str]], None]


def run_demo(
    endpoint_url: str | None,
    postgres_url: str | None,
    prefix: str,
    *,
    before_verify: BeforeVerify | None = None,
) -> int:
    """The demo; its exit status: 0 when podyn ran and ``podyn --verify`` found the copy equal, 4 when verify found
    differences, 3 when it could not verify every table, 1 when podyn failed."""
    from podyn_py.replicate import replicate

    out = sys.stdout
    with _services(endpoint_url, postgres_url) as (endpoint, url):
        conninfo = parse_postgres_url(url)
        click.echo(f"DynamoDB: {endpoint}\nPostgreSQL: {redact(conninfo)}")
        local = endpoint_url is None
        client = local_client("dynamodb", endpoint) if local else _client(endpoint)
        names = create_sample_tables(client, prefix)
        click.echo(f"created and filled {', '.join(names.values())}")
        stop = threading.Event()
        config = Config(
            tables=tuple(names.values()),
            postgres=conninfo,
            schema=True,
            data=True,
            changes=True,
            connections=4,
            aws=AwsSettings(
                endpoint_url=endpoint,
                access_key_id=LOCAL_ACCESS_KEY if local else None,
                secret_access_key=LOCAL_SECRET_KEY if local else None,
            ),
        )
        click.echo("\n$ podyn --schema --data --changes  (running in the background)")
        result: dict[str, Any] = {}
        reports: list[verify.TableReport] | None = None
        worker = threading.Thread(target=lambda: result.update(summary=replicate(config, stop=stop)), daemon=True)
        worker.start()
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:

                def all_live() -> bool:
                    if not worker.is_alive():
                        raise click.ClickException("podyn stopped early; see the log above")
                    if state.read_schema_version(conn) is None:
                        return False
                    live = [t for t in state.read_progress(conn) if t.state is state.TableState.LIVE]
                    return len(live) == len(names)

                wait_for(all_live, 120, "the tables to go live")
                click.echo("\nall tables loaded and live; now changing DynamoDB:")
                for line in make_live_changes(client, names):
                    click.echo(f"  {line}")
                catalog = names["ProductCatalog"]

                def arrived() -> bool:
                    row = conn.execute(
                        sql.SQL('SELECT count(*) FROM {} WHERE "Id" = 300').format(sql.Identifier(catalog))
                    ).fetchone()
                    gone = conn.execute(
                        sql.SQL('SELECT count(*) FROM {} WHERE "Id" = 205').format(sql.Identifier(catalog))
                    ).fetchone()
                    # The Forum change adds a column for the string variant: read the row as JSON, which holds
                    # that column once it exists.
                    threads = conn.execute(
                        sql.SQL("SELECT to_jsonb(f) ->> {} FROM {} f WHERE \"Name\" = 'Amazon S3'").format(
                            sql.Literal("Threads_text"), sql.Identifier(names["Forum"])
                        )
                    ).fetchone()
                    forum_done = bool(threads and threads[0] == "one")
                    return bool(row and row[0] == 1 and gone and gone[0] == 0) and forum_done

                wait_for(arrived, 60, "the live changes to arrive")
                click.echo("\nthe changes arrived in PostgreSQL:")
                print_table(conn, catalog, out, where='WHERE "Id" IN (101, 300)')
                stop.set()
                worker.join(30)
                if before_verify is not None:
                    before_verify(conn, client, names)
                reports = _verify(config)
                for table in names.values():
                    print_table(conn, table, out)
                click.echo(
                    "\nstatus of the replication (podyn --status):\n"
                    + "\n".join(
                        f"  {t.source_table}: {t.state.value}, {t.items_loaded} items loaded,"
                        f" {t.changes_applied} changes applied"
                        for t in state.read_progress(conn)
                    )
                )
        finally:
            stop.set()
            worker.join(30)
            if not local:
                for table in names.values():
                    with contextlib.suppress(Exception):
                        client.delete_table(TableName=table)
    summary = result.get("summary")
    if summary is None or summary.failed:
        click.echo("\ndemo finished: podyn failed, see above")
        return EXIT_ERROR
    if reports is None or any(r.error or r.interrupted for r in reports):
        click.echo("\ndemo finished: the copy could not be verified (see the podyn --verify report above)")
        return EXIT_TABLES_FAILED
    if not all(r.equal for r in reports):
        click.echo("\ndemo finished: the copy DIFFERS from DynamoDB (see the podyn --verify report above)")
        return EXIT_DIFFERENCES
    click.echo(f"\ndemo finished: podyn --verify found the copy equal to DynamoDB ({len(reports)} tables)")
    return EXIT_OK


def _verify(config: Config) -> list[verify.TableReport] | None:
    """``podyn --verify`` over the demo's tables: its report printed, and returned (None: it could not run)."""
    click.echo("\n$ podyn --verify")
    check = replace(config, schema=False, data=False, changes=False)
    try:
        reports = verify.verify(check, verify.VerifyOptions())
    except PodynError as exc:
        click.echo(f"podyn: {exc}")
        return None
    click.echo(verify.render(reports))
    return reports


def _client(endpoint: str) -> Any:
    from podyn_py.source.dynamodb import make_client

    return make_client(AwsSettings(endpoint_url=endpoint))


@click.command()
@click.option("--endpoint-url", help="Use this DynamoDB endpoint instead of starting DynamoDB Local.")
@click.option("-u", "--postgres-url", help="Use this PostgreSQL instead of starting one.")
@click.option("--prefix", default="demo_", show_default=True, help="Prefix of the sample tables' names.")
def main(endpoint_url: str | None, postgres_url: str | None, prefix: str) -> None:
    """Run podyn end to end on sample tables, on local services it starts (or on the ones you give)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "podyn_py.source.streams"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(run_demo(endpoint_url, postgres_url, prefix))


if __name__ == "__main__":
    main()
