#!/usr/bin/env python3
"""Writes dashboards/switchboard.json, Switchboard's Grafana dashboard, from the panel list below.

Run it after changing a panel: python3 dashboards/generate.py. The JSON is committed, provisions
as is (no __inputs), and tests/it/dashboards.rs checks its conventions; the live test queries
every panel against a real Prometheus scraping a running gateway.
"""

import json
import pathlib

F = 'cluster=~"$cluster", instance=~"$instance"'
DS = {"type": "prometheus", "uid": "${datasource}"}
SERVER_CODES = "Unknown|Internal|Unavailable|DataLoss|DeadlineExceeded"


def rate(metric, extra="", by=None, fn="rate"):
    sel = f"{metric}{{{F}{', ' + extra if extra else ''}}}"
    inner = f"{fn}({sel}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, by=None, extra=""):
    labels = "le" + (f", {by}" if by else "")
    sel = f"{metric}_bucket{{{F}{', ' + extra if extra else ''}}}"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({sel}[$__rate_interval])))"


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


ROWS = []


def row(title):
    ROWS.append({"title": title, "panels": []})


def panel(kind, title, description, unit, targets, width=6, stack=False, no_value=None, thresholds=None, min_=None, max_=None):
    if isinstance(targets, str):
        targets = [(targets, "")]
    refs = "ABCDEFGH"
    instant = kind in ("stat", "bargauge", "table")
    defaults = {"unit": unit}
    if no_value is not None:
        defaults["noValue"] = no_value
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in thresholds]}
    if kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 20 if stack else 5, "stacking": {"mode": "normal" if stack else "none"}, "showPoints": "never"}
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [target(e, l, refs[i], instant) for i, (e, l) in enumerate(targets)],
        "w": width,
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "none"}
    ROWS[-1]["panels"].append(p)


# ---- Overview -----------------------------------------------------------------------------------
row("Overview")
panel("stat", "Gateways up", "Gateway processes Prometheus can scrape (up == 1). Fewer than you run means a node is down: see the SwitchboardDown alert.", "none",
      f'sum(up{{job="switchboard", {F}}})', width=4, thresholds=[(None, "red"), (1, "green")])
panel("stat", "Active calls", "Calls in progress across the selected gateways, every direction.", "none",
      f"sum(switchboard_calls_active{{{F}}})", width=4)
panel("stat", "PBX links up", "Gateways whose PBX link is registered. In a cluster one node holding the link is enough.", "none",
      f"sum(switchboard_pbx_link_up{{{F}}})", width=4, thresholds=[(None, "red"), (1, "green")])
panel("stat", "Firing alerts", "Switchboard alerts firing now (ALERTS from Prometheus' rule evaluation); 0 when none.", "none",
      f'count(ALERTS{{alertstate="firing", alertname=~"Switchboard.*", {F}}}) or vector(0)', width=4, no_value="0",
      thresholds=[(None, "green"), (1, "red")])
panel("stat", "API availability", "Share of gRPC requests over the dashboard's time range that did not fail with a server-side code (Unknown, Internal, Unavailable, DataLoss, DeadlineExceeded). SLO 99.9%.", "percentunit",
      f'1 - (sum(rate(switchboard_grpc_requests_total{{{F}, code=~"{SERVER_CODES}"}}[$__range])) / clamp_min(sum(rate(switchboard_grpc_requests_total{{{F}}}[$__range])), 1e-9))',
      width=4, thresholds=[(None, "red"), (0.999, "green")], min_=0, max_=1)
panel("stat", "Salesforce budget used", "Share of the org's 24-hour API allowance used (Sforce-Limit-Info); 0 until the Salesforce client reports.", "percentunit",
      f"max(switchboard_salesforce_api_usage_requests{{{F}}}) / clamp_min(max(switchboard_salesforce_api_limit_requests{{{F}}}), 1)",
      width=4, thresholds=[(None, "green"), (0.8, "orange"), (0.9, "red")], min_=0, max_=1)
panel("bargauge", "Agents by presence", "Agent lines by what desktops show (available, busy, away, ...).", "none",
      [(f"sum by (presence) (switchboard_agent_lines{{{F}}})", "{{presence}}")], width=8)
panel("timeseries", "Active calls by direction", "Calls in progress by direction; unknown until the model knows which way a call goes.", "none",
      [(f"sum by (direction) (switchboard_calls_active{{{F}}})", "{{direction}}")], width=8, stack=True)
panel("table", "Versions", "Gateways by version and git commit (switchboard_build_info).", "none",
      [(f"count by (version, git_commit) (switchboard_build_info{{{F}}})", "")], width=8)

# ---- PBX link -----------------------------------------------------------------------------------
row("PBX link")
panel("timeseries", "Link up by instance", "1 while the gateway's PBX link is registered. In a cluster only the node that holds the link shows 1.", "none",
      [(f"max by (instance) (switchboard_pbx_link_up{{{F}}})", "{{instance}}")], width=8, min_=0, max_=1)
panel("timeseries", "Reconnects by reason", "Reconnects per second, by why the link was lost or not established. A steady rate is flapping.", "ops",
      [(rate("switchboard_pbx_reconnects_total", by="reason"), "{{reason}}")], width=8)
panel("timeseries", "Seconds since the last frame", "Seconds since any frame came from the PBX. Heartbeats keep it under the heartbeat interval; past three intervals the link is declared dead.", "s",
      [(f"max by (instance) (switchboard_pbx_last_frame_age_seconds{{{F}}})", "{{instance}}")], width=8)
panel("timeseries", "Frames per second", "Frames received from and sent to the PBX.", "ops",
      [(rate("switchboard_pbx_frames_received_total"), "received"), (rate("switchboard_pbx_frames_sent_total"), "sent")], width=8)
panel("timeseries", "Decode errors by kind", "Links closed because a frame from the PBX could not be decoded, per second, by kind. Anything above 0 means a PBX or network problem.", "ops",
      [(rate("switchboard_pbx_decode_errors_total", by="kind"), "{{kind}}")], width=8)
panel("timeseries", "PBX request latency", "Seconds from sending a request (call control, agent state) to the PBX to its answer: p50 and p99.", "s",
      [(quantile(0.5, "switchboard_pbx_request_duration_seconds"), "p50"), (quantile(0.99, "switchboard_pbx_request_duration_seconds"), "p99")], width=8)
panel("timeseries", "Events, gaps and resyncs", "Events delivered in order per second, lost events detected and resyncs from snapshots.", "ops",
      [(rate("switchboard_pbx_events_total"), "events"), (rate("switchboard_pbx_sequence_gaps_total"), "gaps"), (rate("switchboard_pbx_resyncs_total"), "resyncs")], width=8)

# ---- Calls and agents ---------------------------------------------------------------------------
row("Calls and agents")
panel("timeseries", "Calls ended by outcome", "Calls ended per second: answered by an agent, abandoned while ringing, or unanswered.", "ops",
      [(rate("switchboard_calls_ended_total", by="outcome"), "{{outcome}}")], width=8, stack=True)
panel("timeseries", "Agent lines by presence", "Agent lines by presence, stacked.", "none",
      [(f"sum by (presence) (switchboard_agent_lines{{{F}}})", "{{presence}}")], width=8, stack=True)
panel("timeseries", "Agent lines by PBX state", "Agent lines by the PBX's agent state (ready, not ready, after-call work, ...), stacked.", "none",
      [(f"sum by (state) (switchboard_agent_lines{{{F}}})", "{{state}}")], width=8, stack=True)
panel("timeseries", "Call log records", "Call log records written per second (one per agent leg), orphaned calls closed because the PBX no longer had them, and calls ended because they went on among outside parties only.", "ops",
      [(rate("switchboard_call_log_records_total"), "records"), (rate("switchboard_orphan_calls_closed_total"), "orphans closed"), (rate("switchboard_calls_left_view_total"), "left view")], width=12)
panel("timeseries", "Screen pop latency", "Seconds from a line ringing to its Salesforce screen pop: p50, p95, p99. SLO: p99 under 0.25 s.", "s",
      [(quantile(q, "switchboard_salesforce_screen_pop_seconds"), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)], width=12)

# ---- gRPC API -----------------------------------------------------------------------------------
row("gRPC API")
panel("timeseries", "Requests by method", "gRPC requests finished per second, by service and method.", "reqps",
      [(rate("switchboard_grpc_requests_total", by="service, method"), "{{service}}/{{method}}")], width=8)
panel("timeseries", "Requests by code", "gRPC requests finished per second, by status code. Client codes (NotFound, InvalidArgument, ...) do not burn the error budget.", "reqps",
      [(rate("switchboard_grpc_requests_total", by="code"), "{{code}}")], width=8)
panel("timeseries", "Server error ratio", "Share of gRPC requests failing with a server-side code, the error budget's measure (SLO 99.9%: 0.001).", "percentunit",
      [(f'{rate("switchboard_grpc_requests_total", extra=f"code=~{chr(34)}{SERVER_CODES}{chr(34)}")} / clamp_min({rate("switchboard_grpc_requests_total")}, 1e-9)', "server errors")], width=8)
panel("timeseries", "Unary latency p99 by method", "99th percentile seconds to answer a unary gRPC request, by method. SLO threshold 0.25 s.", "s",
      [(quantile(0.99, "switchboard_grpc_request_duration_seconds", by="method"), "{{method}}")], width=8)
panel("timeseries", "Active streams", "Event streams (and health watches) open.", "none",
      [(f"sum by (method) (switchboard_grpc_active_streams{{{F}}})", "{{method}}")], width=8)
panel("timeseries", "Refused requests", "Requests refused per second for their credentials (by reason) or their client's rate limit.", "reqps",
      [(rate("switchboard_grpc_auth_failures_total", by="reason"), "{{reason}}"), (rate("switchboard_grpc_rate_limited_total"), "rate limited")], width=8)

# ---- Salesforce and outbox ----------------------------------------------------------------------
row("Salesforce and outbox")
panel("timeseries", "Salesforce requests", "Salesforce API requests per second by operation and outcome.", "reqps",
      [(rate("switchboard_salesforce_requests_total", by="operation, outcome"), "{{operation}} {{outcome}}")], width=8)
panel("timeseries", "Salesforce latency p95", "95th percentile seconds per Salesforce API request, by operation.", "s",
      [(quantile(0.95, "switchboard_salesforce_request_duration_seconds", by="operation"), "{{operation}}")], width=8)
panel("timeseries", "Requests per call", "Salesforce API requests per telephone call ended: what the budget costs per call.", "none",
      [(f'{rate("switchboard_salesforce_requests_total")} / clamp_min({rate("switchboard_calls_ended_total")}, 1e-9)', "requests per call")], width=8)
panel("timeseries", "API budget and forecast", "API requests used in the org's 24-hour allowance, the allowance, and where usage is heading in 4 hours at the last hour's pace (predict_linear). The forecast crossing the limit means the budget runs out.", "none",
      [(f"max(switchboard_salesforce_api_usage_requests{{{F}}})", "used"),
       (f"max(switchboard_salesforce_api_limit_requests{{{F}}})", "limit"),
       (f"max(predict_linear(switchboard_salesforce_api_usage_requests{{{F}}}[1h], 4 * 3600))", "forecast in 4h")], width=8)
panel("timeseries", "Budget state", "1 on the API budget's state: normal, throttled, reads_only, stopped.", "none",
      [(f"max by (state) (switchboard_salesforce_budget_state{{{F}}})", "{{state}}")], width=8, min_=0, max_=1)
panel("timeseries", "Batch sizes", "Numbers per search and records per upsert: p50 and p95 by operation.", "none",
      [(quantile(0.5, "switchboard_salesforce_batch_size", by="operation"), "p50 {{operation}}"), (quantile(0.95, "switchboard_salesforce_batch_size", by="operation"), "p95 {{operation}}")], width=8)
panel("timeseries", "Lookup cache", "Share of caller lookups answered from the cache, and lookups per second that shared another's request.", "percentunit",
      [(f'{rate("switchboard_salesforce_cache_lookups_total", extra=chr(114) + "esult=" + chr(34) + "hit" + chr(34))} / clamp_min({rate("switchboard_salesforce_cache_lookups_total")}, 1e-9)', "hit ratio"),
       (rate("switchboard_salesforce_coalesced_lookups_total"), "coalesced/s")], width=8)
panel("timeseries", "Screen pops by result", "Screen pops per second by what the lookup found: one record, several, none, or failed.", "ops",
      [(rate("switchboard_salesforce_screen_pops_total", by="result"), "{{result}}")], width=8, stack=True)
panel("timeseries", "Records created", "Contacts and Leads created per second.", "ops",
      [(rate("switchboard_salesforce_records_created_total", by="object"), "{{object}}")], width=8)
panel("timeseries", "Outbox depth", "Records waiting in the outbox and held as dead letters.", "none",
      [(f"sum(switchboard_outbox_depth{{{F}}})", "waiting"), (f"sum(switchboard_outbox_dead_letters{{{F}}})", "dead letters")], width=8)
panel("timeseries", "Outbox oldest age", "Age of the oldest record waiting in the outbox. Above 300 s call logs reach Salesforce late: SwitchboardOutboxBacklog.", "s",
      [(f"max by (instance) (switchboard_outbox_oldest_age_seconds{{{F}}})", "{{instance}}")], width=8)
panel("timeseries", "Outbox throughput", "Records delivered, retries and records dead-lettered, per second.", "ops",
      [(rate("switchboard_outbox_delivered_total"), "delivered"), (rate("switchboard_outbox_retries_total"), "retries"), (rate("switchboard_outbox_dead_lettered_total"), "dead-lettered")], width=8)

# ---- Runtime and actors -------------------------------------------------------------------------
row("Runtime and actors")
panel("timeseries", "Actors", "Live line and call actors.", "none",
      [(f"sum by (kind) (switchboard_actors{{{F}}})", "{{kind}}")], width=8)
panel("timeseries", "Actor restarts", "Line and call actors restarted after a crash, per second. Any restart is a bug to look into.", "ops",
      [(rate("switchboard_actor_restarts_total"), "restarts")], width=8)
panel("timeseries", "Actor mailboxes", "Messages waiting in line and call actors' mailboxes: in all, and in the fullest one. A mailbox that keeps growing means an actor cannot keep up with its line's news: SwitchboardActorMailboxBacklog.", "none",
      [(f"sum by (kind) (switchboard_actor_mailbox_messages{{{F}}})", "{{kind}} waiting"), (f"max by (kind) (switchboard_actor_mailbox_messages_max{{{F}}})", "{{kind}} fullest")], width=8)
panel("timeseries", "Tokio runtime", "Tokio worker threads, tasks alive, and tasks waiting in the global queue (a growing queue means the workers cannot keep up).", "none",
      [(f"sum(switchboard_tokio_workers{{{F}}})", "workers"), (f"sum(switchboard_tokio_alive_tasks{{{F}}})", "alive tasks"), (f"sum(switchboard_tokio_global_queue_depth{{{F}}})", "global queue")], width=8)
panel("timeseries", "CPU", "CPU used by each gateway process, in cores.", "percentunit",
      [(rate("process_cpu_seconds_total", by="instance"), "{{instance}}")], width=8)
panel("timeseries", "Resident memory", "Resident memory of each gateway process.", "bytes",
      [(f"max by (instance) (process_resident_memory_bytes{{{F}}})", "{{instance}}")], width=8)
panel("timeseries", "File descriptors", "Open file descriptors against the limit, per process.", "percentunit",
      [(f"max by (instance) (process_open_fds{{{F}}} / process_max_fds{{{F}}})", "{{instance}}")], width=8)
panel("stat", "Process restarts (1h)", "Times each gateway process started in the last hour (changes of process_start_time_seconds).", "none",
      f"sum(changes(process_start_time_seconds{{{F}}}[1h]))", width=8)

# ---- Cluster ------------------------------------------------------------------------------------
row("Cluster")
panel("timeseries", "Cluster members seen", "Members of its cluster each node sees. Nodes disagreeing means a partition.", "none",
      [(f"max by (instance) (switchboard_cluster_members{{{F}}})", "{{instance}}")], width=8)
panel("timeseries", "Owned lines", "Agent lines each node owns in its cluster.", "none",
      [(f"max by (instance) (switchboard_cluster_owned_lines{{{F}}})", "{{instance}}")], width=8, stack=True)
panel("timeseries", "Standby lines", "Agent lines each node monitors as their standby, ready to take them if their owner dies. With two nodes or more every line has one standby: the stack equals the owned lines' stack; less means some lines would be rebuilt from snapshots at a failover.", "none",
      [(f"max by (instance) (switchboard_cluster_standby_lines{{{F}}})", "{{instance}}")], width=8, stack=True)
panel("timeseries", "Forwarded requests", "gRPC requests passed to another node (the line's owner, or every member for a call id, a listing or an event stream), by outcome. Refused: not sent, the line was moving; unreachable: the other node did not answer.", "reqps",
      [(rate("switchboard_grpc_forwarded_requests_total", by="outcome"), "{{outcome}}")], width=8, stack=True)
panel("timeseries", "Shared Salesforce allowance: blocks", "Blocks of the cluster's shared Salesforce allowance taken from etcd, per second, by result. spent: the cluster used its share for the day; unreachable: etcd did not answer (nodes spend what they hold, then wait).", "ops",
      [(rate("switchboard_salesforce_budget_blocks_total", by="result"), "{{result}}")], width=8)
panel("timeseries", "Shared Salesforce allowance: held", "Salesforce requests each node holds from blocks of the shared allowance. At zero, a node's Salesforce work waits for the next block.", "none",
      [(f"max by (instance) (switchboard_salesforce_budget_held_requests{{{F}}})", "{{instance}}")], width=8)
panel("timeseries", "Open-leg journal writes", "Lines written to the open-leg journal in etcd, per second, by outcome. fenced: refused because the node no longer holds the line's claim (a stale owner, as designed); failed: etcd did not answer.", "ops",
      [(rate("switchboard_cluster_journal_writes_total", by="outcome"), "{{outcome}}")], width=8)


def layout():
    panels, y, next_id = [], 0, 1
    for r in ROWS:
        panels.append({"type": "row", "title": r["title"], "id": next_id, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for p in r["panels"]:
            w = p.pop("w")
            h = 4 if p["type"] == "stat" else 8
            if x + w > 24:
                x, y, line_height = 0, y + line_height, 0
            p["id"] = next_id
            next_id += 1
            p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            panels.append(p)
            x += w
            line_height = max(line_height, h)
        y += line_height
    return panels


def variable(name, label, query):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


dashboard = {
    "uid": "switchboard-overview",
    "title": "Switchboard",
    "description": "Switchboard CTI gateway: PBX link, calls and agents, gRPC API, Salesforce and outbox, runtime, cluster.",
    "tags": ["switchboard", "cti"],
    "schemaVersion": 39,
    "version": 1,
    "editable": False,
    "graphTooltip": 1,
    "timezone": "",
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": ""},
        variable("cluster", "Cluster", "label_values(switchboard_build_info, cluster)"),
        variable("instance", "Instance", 'label_values(switchboard_build_info{cluster=~"$cluster"}, instance)'),
    ]},
    "panels": layout(),
}

out = pathlib.Path(__file__).with_name("switchboard.json")
out.write_text(json.dumps(dashboard, indent=2) + "\n")
