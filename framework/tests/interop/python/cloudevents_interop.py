#!/usr/bin/env python3
"""CloudEvents interop program (Python): the official CloudEvents SDK for Python, version 2
(its Kafka binding, ``cloudevents.core.bindings.kafka``), on confluent-kafka.

choreo's integration tests (framework/tests/it/interop.rs) run it to check that choreo's
records are CloudEvents this SDK reads, and that what this SDK writes choreo reads.

  produce  writes one event, binary or structured mode
  consume  reads N records of a topic from the beginning (read_committed), turns each into a
           CloudEvent with the SDK (from_binary or from_structured, chosen by content-type)
           and prints one JSON line per event:
             {"sdk", "mode", "topic", "partition", "offset", "key",
              "attributes": {every attribute the SDK sees, time as RFC 3339},
              "data": the data (parsed JSON, text, or null),
              "data_base64": the data when it is bytes that are not text}

Run by scripts/interop-setup's venv interpreter ($CHOREO_INTEROP_PYTHON).
"""

import argparse
import base64
import json
import os
import sys
import time
import uuid
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from dateutil.parser import isoparse

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

STRUCTURED_PREFIX = "application/cloudevents"


def brokers(args):
    return args.brokers or os.environ.get("CHOREO_KAFKA_BROKERS", "127.0.0.1:9092")


def fail(message):
    print(f"cloudevents_interop.py: {message}", file=sys.stderr)
    sys.exit(1)


# ------------------------------------------------------------------------------ produce


def build_event(args):
    attributes = {
        "specversion": "1.0",
        "id": args.id,
        "source": args.source,
        "type": args.type,
    }
    if args.subject is not None:
        attributes["subject"] = args.subject
    if args.time is not None:
        attributes["time"] = isoparse(args.time)
    if args.datacontenttype is not None:
        attributes["datacontenttype"] = args.datacontenttype
    for extension in args.ext:
        name, sep, value = extension.partition("=")
        if not sep:
            fail(f"--ext wants NAME=VALUE, got {extension!r}")
        attributes[name] = value
    data = None
    if args.data is not None:
        data = json.loads(args.data)
        if args.data_base64:
            # Bytes: the JSON format writes them as data_base64 in structured mode.
            data = args.data.encode("utf-8")
    given_time = "time" in attributes
    event = CloudEvent(attributes, data)
    if not given_time:
        # The SDK's CloudEvent fills in `time` (now) when it is absent; an event with only
        # the required attributes must not carry one. get_attributes() is the event's own
        # dict, which the Kafka binding reads when it writes the record.
        event.get_attributes().pop("time", None)
    return event


def produce(args):
    event = build_event(args)
    key_mapper = lambda _event: args.key  # noqa: E731 (the record key, or None)
    if args.mode == "binary":
        message = ce_kafka.to_binary(event, JSONFormat(), key_mapper)
    else:
        message = ce_kafka.to_structured(event, JSONFormat(), key_mapper)
    producer = Producer(
        {
            "bootstrap.servers": brokers(args),
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    outcome = {}

    def delivered(err, msg):
        outcome["error"] = err
        if err is None:
            outcome["partition"] = msg.partition()
            outcome["offset"] = msg.offset()

    producer.produce(
        args.topic,
        key=message.key,
        value=message.value,
        headers=list(message.headers.items()),
        on_delivery=delivered,
    )
    remaining = producer.flush(30)
    if remaining or "error" not in outcome:
        fail(f"the record to {args.topic} was not delivered within 30 s")
    if outcome["error"] is not None:
        fail(f"delivery to {args.topic} failed: {outcome['error']}")
    print(
        json.dumps(
            {
                "sdk": "python",
                "mode": args.mode,
                "topic": args.topic,
                "partition": outcome["partition"],
                "offset": outcome["offset"],
                "id": args.id,
            }
        )
    )


# ------------------------------------------------------------------------------ consume


def rfc3339(value):
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def attribute_json(value):
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def event_line(msg, mode, event):
    data = event.get_data()
    line = {
        "sdk": "python",
        "mode": mode,
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": msg.key().decode("utf-8", "replace") if msg.key() is not None else None,
        "attributes": {
            name: attribute_json(value) for name, value in event.get_attributes().items()
        },
    }
    if isinstance(data, (bytes, bytearray)):
        line["data"] = None
        line["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        line["data"] = data
    return line


def consume(args):
    consumer = Consumer(
        {
            "bootstrap.servers": brokers(args),
            "group.id": f"cloudevents-interop-python-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(args.topic, timeout=10)
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            fail(f"topic {args.topic} not found: {topic.error if topic else 'no metadata'}")
        consumer.assign(
            [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)]
        )
        deadline = time.monotonic() + args.timeout
        seen = 0
        while seen < args.count:
            if time.monotonic() > deadline:
                fail(f"read {seen} of {args.count} records of {args.topic} in {args.timeout} s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().retriable() or msg.error().code() < 0:
                    # Partition EOF and other informational events.
                    continue
                fail(f"consume error: {msg.error()}")
            headers = {k: (v if v is not None else b"") for k, v in (msg.headers() or [])}
            message = ce_kafka.KafkaMessage(
                headers=headers, key=msg.key(), value=msg.value() or b""
            )
            content_type = headers.get("content-type", b"").decode("utf-8", "replace")
            if content_type.strip().lower().startswith(STRUCTURED_PREFIX):
                mode, event = "structured", ce_kafka.from_structured(message, JSONFormat())
            else:
                mode, event = "binary", ce_kafka.from_binary(message, JSONFormat())
            print(json.dumps(event_line(msg, mode, event)), flush=True)
            seen += 1
    except KafkaException as e:
        fail(f"kafka: {e}")
    finally:
        consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", help="default: $CHOREO_KAFKA_BROKERS or 127.0.0.1:9092")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("produce", help="write one event")
    p.add_argument("--topic", required=True)
    p.add_argument("--mode", choices=["binary", "structured"], default="binary")
    p.add_argument("--key", help="the record key (none without it)")
    p.add_argument("--id", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--subject")
    p.add_argument("--time", help="RFC 3339; the event has no time without it")
    p.add_argument("--datacontenttype")
    p.add_argument("--ext", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--data", help="JSON")
    p.add_argument(
        "--data-base64",
        action="store_true",
        help="hand the data to the SDK as bytes (structured mode: data_base64)",
    )
    p.set_defaults(run=produce)

    c = commands.add_parser("consume", help="read N records from the beginning")
    c.add_argument("--topic", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, default=60.0, help="seconds")
    c.set_defaults(run=consume)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
