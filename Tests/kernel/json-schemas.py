#!/usr/bin/env python3
"""The JSON every vhostctl command prints with --json, as checkable schemas (docs/json.md is the
same in prose; `json-schemas.py --check-docs docs/json.md` fails when a field here is missing there).

Usage:
  json-schemas.py COMMAND FILE       validate FILE (a command's standard output) against COMMAND's
                                     schema; COMMAND is one of the keys of SCHEMAS below. Commands
                                     that print JSON Lines (attach, script-run) are checked line by
                                     line, each by its "event". Prints "ok ..." or the first problem
                                     and exits 1.
  json-schemas.py --check-docs FILE  every command and field name appears in FILE.

Schema notation: a dict is an object whose keys are its fields ("name?" is optional: absent when
it has no value); a one-element list is an array of that element; {"*": T} is an object with any
keys and values of type T; the strings "int" (an integer >= 0 unless "sint"), "number", "string",
"bool" are JSON's scalars.
"""
import json
import re
import sys

FEATURES = {"raw": "int", "names": ["string"]}
DIRECTION = {"frames": "int", "bytes": "int", "drops": "int"}
COUNTERS = {"rx": DIRECTION, "tx": DIRECTION, "kicks": "int", "calls": "int", "arp": "int", "icmp": "int", "udp": "int",
            "nd_advertisements": "int", "nd_solicitations": "int", "dad": "int", "icmp6": "int", "udp6": "int",
            "reassembled": "int", "fragments_sent": "int", "uso": "int", "csum_errors": "int"}
QUEUE_SIDE = {"frames": "int", "bytes": "int", "drops": "int", "ring_errors": "int", "calls": "int", "kicks": "int",
              "frames_per_second": "number", "bytes_per_second": "number"}
QUEUE_PAIR = {"queue_pair": "int", "running": "bool", "rx": QUEUE_SIDE, "tx": QUEUE_SIDE}
TAP_COUNTERS = {"tx_packets_toward_us": "int", "tx_dropped_toward_us": "int", "rx_packets_from_us": "int", "rx_dropped_from_us": "int"}
LATENCY = {"count": "int", "completed": "int", "p50": "int", "p99": "int", "p99_9": "int", "max": "int", "lost": "int"}

SCHEMAS = {
    "info": {"kernel": "string", "device": "string", "usable": "bool", "problem?": "string", "features?": FEATURES,
             "features_above_63?": FEATURES, "worker_mode?": "string", "backend_features?": FEATURES, "tap_features?": FEATURES,
             "tap_problem?": "string", "module_parameters": {"*": "string"},
             "checks": [{"name": "string", "status": "string", "fact": "string", "fix?": "string"}]},
    # JSON Lines, one schema per "event".
    "attach": {
        "attached": {"event": "string", "interface": "string", "backend": "string", "mac": "string", "queue_pairs": "int",
                     "negotiated_features": ["string"]},
        "stats": {"event": "string", "elapsed_seconds": "number", "counters": COUNTERS, "queues": [QUEUE_PAIR], "tap?": TAP_COUNTERS},
        "stopped": {"event": "string", "elapsed_seconds": "number", "counters": COUNTERS, "signal?": "int", "pcap_frames?": "int",
                    "pcap_path?": "string"},
    },
    "demo": {"kernel": "string", "tap": "string", "negotiated_features": ["string"], "pings_sent": "int", "ping_replies": "int",
             "rtt_ms?": {"min": "number", "avg": "number", "max": "number"},
             "tx": {"frames_per_second": "number", "sent": "int", "counted": "int"},
             "rx": {"frames_per_second": "number", "sent": "int", "counted": "int"},
             "checks": [{"name": "string", "passed": "bool"}], "passed": "bool"},
    "bench-configs": {"kernel": "string", "frame_size": "int", "trials": "int", "seconds": "number",
                      "configs": [{"name": "string", "tx_pps_median": "int", "tx_pps": ["int"], "tx_ratio": "string",
                                   "rx_pps_median": "int", "rx_pps": ["int"], "rx_ratio": "string",
                                   "tx_driver_ns_per_frame": "number", "tx_worker_ns_per_frame?": "number",
                                   "rx_driver_ns_per_frame": "number", "rx_worker_ns_per_frame?": "number"}],
                      "rtt_ns?": {"count": "int", "p50": "int", "p90": "int", "p99": "int", "max": "int"}},
    "bench-backends": {
        "environment": {"kernel": "string", "cpu_model": "string", "cpus": "int", "emulated": "bool", "rx_source": "string"},
        "method": {"trials": "int", "seconds": "number", "warmup_seconds": "number", "interleaved": "bool", "baseline": "string",
                   "xdp_drop": "bool", "driver_cpu?": "int"},
        "results": [{"scenario": "string", "backend": "string", "frame_size": "int", "tso": "bool", "queue_pairs": "int",
                     "queue_size": "int", "mode": "string", "event_idx": "bool", "batch": "int", "busyloop_us": "int",
                     "worker_cpu?": "int", "rx_coalesce": "string", "rx_coalesce_delay_ms?": "int", "layout?": "string", "mrg_rxbuf?": "bool",
                     "in_order?": "bool", "huge_pages?": "bool", "buffer_size?": "int", "net_header?": "string", "latency_ns?": LATENCY,
                     "pps": {"median": "number", "min": "number", "max": "number"}, "gbps_median": "number",
                     "ratio_to_baseline?": "number", "driver_ns_per_frame_median": "number", "worker_ns_per_frame_median?": "number",
                     "kicks_per_frame_median?": "number", "calls_per_frame_median?": "number",
                     "trials": [{"frames": "int", "seconds": "number", "pps": "number", "tx_sent": "int", "tx_counted_by_tap": "int",
                                 "tx_bytes_counted_by_tap": "int", "tx_dropped_at_tap": "int", "rx_received": "int",
                                 "rx_tap_passed": "int", "rx_tap_dropped": "int", "rx_source": "string",
                                 "queue_tx_sent": ["int"], "queue_rx_received": ["int"], "tso_seen?": "string", "tso_verified?": "bool",
                                 "driver_cpu_ns": "int", "worker_cpu_ns?": "int", "kicks": "int", "calls": "int",
                                 "latency_ns?": LATENCY}]}]},
    "bench-echo": {"kernel": "string", "source": "string", "rate": "int", "frame_size": "int", "seconds": "number",
                   "paths": [{"reply_path": "string", "replies_per_second_median": "number", "ratio_to_single?": "number",
                              "trials": [{"reply_path": "string", "offered_per_second": "int", "sent": "int", "requests_received": "int",
                                          "replies_counted_by_tap": "int", "replies_per_second": "number",
                                          "driver_ns_per_reply?": "number", "worker_ns_per_reply?": "number",
                                          "transmit_publishes": "int"}]}]},
    # JSON Lines, one schema per "event".
    "script-run": {
        "statement": {"event": "string", "command": "string", "file": "string", "line": "int", "column": "int",
                      "as_expected": "bool", "text": "string"},
        "output": {"event": "string", "text": "string"},
        "summary": {"event": "string", "script": "string", "statements": "int", "missed": "int", "passed": "bool",
                    "exit_status": "int", "error?": "string"},
    },
    "script-check": {"script": "string", "well_formed": "bool", "statements": "int"},
    "script-commands": [{"name": "string", "usage": "string", "answer?": "string", "summary": "string"}],
    "migrate-test": {"kernel": "string", "tap": "string", "queue_size": "int", "pages_per_round": ["int"], "stop_and_copy_pages": "int",
                     "downtime_ms": "number", "identical": "bool",
                     "tx": {"sent": "int", "received": "int", "each_once_in_order": "bool"},
                     "rx": {"sent": "int", "received": "int", "each_once_in_order": "bool"}, "passed": "bool"},
    # One reply line of the control socket (attach --control; vhostctl ctl --json prints it).
    "ctl": {"ok": "bool", "message?": "string", "error?": "string", "stopped?": "bool", "counters?": COUNTERS,
            "queues?": [QUEUE_PAIR], "tap?": TAP_COUNTERS, "interval_seconds?": "number", "dirty_pages?": "int"},
    "cleanup": {"dry_run": "bool", "items": [{"action": "string", "kind": "string", "name": "string", "index?": "int", "reason": "string"}],
                "removed": "int", "kept": "int", "failed": "int"},
}
JSON_LINES = {"attach", "script-run"}


def check(value, schema, path):
    """Returns the first problem of `value` against `schema`, or None."""
    if isinstance(schema, str):
        ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
              "sint": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "string": isinstance(value, str), "bool": isinstance(value, bool)}[schema]
        return None if ok else f"{path}: {json.dumps(value)[:80]} is not {schema}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{path}: not an array"
        for i, element in enumerate(value):
            problem = check(element, schema[0], f"{path}[{i}]")
            if problem:
                return problem
        return None
    if not isinstance(value, dict):
        return f"{path}: not an object"
    if "*" in schema:
        for key, element in value.items():
            problem = check(element, schema["*"], f"{path}.{key}")
            if problem:
                return problem
        return None
    fields = {key.rstrip("?"): (spec, key.endswith("?")) for key, spec in schema.items()}
    for key in value:
        if key not in fields:
            return f"{path}: field {key!r} is not in the schema"
    for key, (spec, optional) in fields.items():
        if key not in value:
            if not optional:
                return f"{path}: field {key!r} is missing"
            continue
        problem = check(value[key], spec, f"{path}.{key}")
        if problem:
            return problem
    return None


def validate(command, text):
    schema = SCHEMAS[command]
    if command in JSON_LINES:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                value = json.loads(line)
            except ValueError as error:
                return f"line {number}: not JSON ({error}): {line[:80]}"
            event = value.get("event") if isinstance(value, dict) else None
            if event not in schema:
                return f"line {number}: unknown event {event!r}"
            problem = check(value, schema[event], f"line {number} ({event})")
            if problem:
                return problem
            events.append(event)
        if not events:
            return "no JSON lines"
        last = {"attach": "stopped", "script-run": "summary"}[command]
        if events[-1] != last or events.count(last) != 1:
            return f"the last line must be the one {last!r} object; events: {events}"
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"not one JSON document ({error})"
    return check(value, schema, command)


def field_names(schema):
    if isinstance(schema, list):
        return field_names(schema[0])
    if not isinstance(schema, dict):
        return set()
    names = set()
    for key, spec in schema.items():
        if key != "*":
            names.add(key.rstrip("?"))
        names |= field_names(spec)
    return names


def check_docs(path):
    text = open(path, encoding="utf-8").read()
    missing = []
    for command, schema in SCHEMAS.items():
        heading = "## " + command.replace("-", " ", 1) if command.startswith(("bench-", "script-")) else "## " + command
        if heading not in text:
            missing.append(f"section {heading!r}")
        for name in sorted(field_names(schema) - set(schema if command in JSON_LINES else [])):
            if not re.search(r"`" + re.escape(name) + r"`", text):
                missing.append(f"{command}: field `{name}`")
    return missing


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-docs":
        missing = check_docs(sys.argv[2])
        if missing:
            print(f"{sys.argv[2]} lacks: " + "; ".join(missing))
            sys.exit(1)
        print(f"ok: {sys.argv[2]} documents every command and field")
        sys.exit(0)
    if len(sys.argv) != 3 or sys.argv[1] not in SCHEMAS:
        print(__doc__.strip().splitlines()[2] + "\ncommands: " + " ".join(SCHEMAS))
        sys.exit(2)
    with open(sys.argv[2], encoding="utf-8") as file:
        problem = validate(sys.argv[1], file.read())
    if problem:
        print(f"{sys.argv[1]} JSON does not match docs/json.md: {problem}")
        sys.exit(1)
    print(f"ok {sys.argv[1]}")
