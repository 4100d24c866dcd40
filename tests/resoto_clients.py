"""Drive phasebus with Resoto 3.9.0's client library, as Resoto's components use it.

Run by the tests with the Python of the Resoto environment (``.venv-resoto``):

    python resoto_clients.py --resotocore-uri URL [--psk KEY] --mode run|read

``run`` registers a config model and stores a config with resotolib's config
client, reads it back in the shape resotolib asks for, watches the change
with ``CoreEvents``, subscribes with ``CoreActions`` to ``collect`` and
answers it with ``CoreFeedback`` progress and info, starts the ``collect``
workflow and waits for its ``task_end``. ``read`` reads the stored config
back (after a restart). The last line printed is ``RESULT <json>``.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from typing import Any

import requests
from resotolib.args import ArgumentParser
from resotolib.core import add_args as core_add_args
from resotolib.core import resotocore
from resotolib.core.actions import CoreActions, CoreFeedback
from resotolib.core.ca import TLSData
from resotolib.core.config import get_config, set_config, update_config_model
from resotolib.core.events import CoreEvents
from resotolib.jwt import add_args as jwt_add_args
from resotolib.jwt import encode_jwt_to_headers

CONFIG_ID = "phasebus.test"
MODEL = [
    {
        "fqn": "phasebus_test",
        "bases": [],
        "aggregate_root": True,
        "properties": [
            {"name": "regions", "kind": "string[]", "required": True},
            {"name": "interval", "kind": "int64", "required": True},
        ],
    }
]
CONFIG = {"phasebus_test": {"regions": ["eu-west-1"], "interval": 60}}
SUBSCRIBER = "phasebus.test-collector"


def wait_for(check: Any, what: str, timeout: float = 30) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> None:
    parser = ArgumentParser(description="phasebus test client", env_args_prefix="PBTEST_")
    core_add_args(parser)
    jwt_add_args(parser)
    TLSData.add_args(parser)
    parser.add_argument("--mode", default="run")
    args = parser.parse_args()
    uri, ws_uri = resotocore.http_uri, resotocore.ws_uri
    tls = None
    if resotocore.is_secure:
        tls = TLSData(common_name="phasebus.test", resotocore_uri=uri, psk=args.psk)
        tls.load()
    verify = tls.verify if tls else None
    result: dict[str, Any] = {}

    if args.mode == "read":
        answer, revision = get_config(CONFIG_ID, uri, verify=verify)  # type: ignore[arg-type]
        result = {"answer": answer, "revision": revision}
    else:
        update_config_model(MODEL, resotocore_uri=uri, verify=verify)
        revision = set_config(CONFIG_ID, CONFIG, uri, verify=verify)
        answer, read_revision = get_config(CONFIG_ID, uri, verify=verify)  # type: ignore[arg-type]
        result["stored"] = {"answer": answer, "revision": revision, "read": read_revision}

        events: queue.Queue[dict[str, Any]] = queue.Queue()
        watcher = CoreEvents(
            ws_uri,
            events={"config-updated", "task_end", "error"},
            message_processor=events.put,
            tls_data=tls,
        )
        watcher.daemon = True
        watcher.start()
        wait_for(watcher.connected, "the event listener")
        changed = {"phasebus_test": {"regions": ["eu-west-1", "us-east-1"], "interval": 30}}
        new_revision = set_config(CONFIG_ID, changed, uri, verify=verify)

        feedback: queue.Queue[dict[str, Any]] = queue.Queue()

        def process(message: dict[str, Any]) -> dict[str, Any] | None:
            if message.get("kind") != "action":
                return None
            data = message["data"]
            report = CoreFeedback(data["task"], data["step"], message["message_type"], feedback)
            report.with_context("example", "account-1").progress_done("region", 1, 2)
            report.with_context("example", "account-1").error("Access Denied")
            time.sleep(0.5)  # let the feedback go out before the answer
            return {"kind": "action_done", "message_type": message["message_type"], "data": data}

        actions = CoreActions(
            identifier=SUBSCRIBER,
            resotocore_uri=uri,
            resotocore_ws_uri=ws_uri,
            actions={"collect": {"timeout": 30, "wait_for_completion": True}},
            message_processor=process,
            incoming_messages=feedback,
            tls_data=tls,
        )
        actions.daemon = True
        actions.start()
        wait_for(actions.connected, "the action listener")
        headers: dict[str, str] = {}
        if args.psk:
            encode_jwt_to_headers(headers, {}, args.psk)
        started = requests.post(f"{uri}/workflow/collect/run", headers=headers, verify=verify)
        started.raise_for_status()
        task_id = started.json()["task_id"]
        seen: list[dict[str, Any]] = []

        def task_ended() -> bool:
            while not events.empty():
                seen.append(events.get())
            return any(
                e["message_type"] == "task_end" and e["data"].get("task_id") == task_id
                for e in seen
            )

        wait_for(task_ended, "task_end")
        result.update(
            {
                "new_revision": new_revision,
                "task_id": task_id,
                "events": seen,
            }
        )
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # resotolib's listener threads do not end on their own


if __name__ == "__main__":
    main()
