#!/usr/bin/env python3
"""Runs deploy/cloudformation/monitoring.yaml against what bastion-sshd and dns-sidecar wrote.

    python3 tests/insights.py TEMPLATE LOG.jsonl [--allow-missing FIELD]... [--queries-only]

LOG.jsonl is a server's (and a sidecar's) JSON log: audit events and EMF records, one a line.
CloudWatch cannot run here, so this evaluates the subset of the Logs Insights query language the
template uses (fields with `as` and coalesce(), filter with =, != and like /regex/, stats with
count/sum/min/max/avg and `by`, sort, limit, and the SOURCE prefix of a dashboard's log widget)
over those lines, as Logs Insights would over the log group, and fails on any other syntax.

It fails (exit 1, naming the query and the reason) when a query uses a field that no event it
selects carries (but the --allow-missing ones: `arn` exists only after `bastion login`), when a
query returns no row, and when an alarm or a dashboard widget names a metric, in the
fargate-bastion namespace, with a dimension set that no EMF record declares. --queries-only
(a log of a few events, no metrics) only runs the queries: the caller checks their rows. It prints each query's rows as one JSON line,
{"query": NAME, "rows": [...]}, for the calling test to check.
"""
import json, re, sys

import yaml

NAMESPACE = "fargate-bastion"


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else "Fn::" + suffix
    if isinstance(node, yaml.ScalarNode):
        return {name: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


CfnLoader.add_multi_constructor("!", _tag)


def fail(msg):
    print(f"tests/insights.py: {msg}", file=sys.stderr)
    sys.exit(1)


def split_top(text, sep):
    """Splits at `sep` outside quotes, /regex/ and parentheses."""
    parts, cur, quote, depth = [], "", None, 0
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "\"'/":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


IDENT = r"@?[A-Za-z_][A-Za-z0-9_.]*"


class Query:
    def __init__(self, name, text):
        self.name, self.text = name, text
        self.used = set()  # fields read from the events
        self.defined = set()  # aliases made by the query itself
        self.commands = [self.parse(c) for c in split_top(" ".join(text.split()), "|")]

    def bad(self, why):
        fail(f"query {self.name!r}: {why}\n{self.text}")

    def field(self, name):
        if not re.fullmatch(IDENT, name):
            self.bad(f"not a field name: {name!r}")
        if name not in self.defined:
            self.used.add(name)
        return name

    def expr(self, text):
        """A field or coalesce(field, ...): a function of one event."""
        m = re.fullmatch(r"coalesce\((.*)\)", text)
        if m:
            names = [self.field(a.strip()) for a in split_top(m.group(1), ",")]
            return lambda e: next((get(e, n) for n in names if get(e, n) is not None), None)
        name = self.field(text)
        return lambda e: get(e, name)

    def parse(self, command):
        verb, _, rest = command.partition(" ")
        if verb == "fields":
            items = []
            for item in split_top(rest, ","):
                expr, alias = (re.split(r"\s+as\s+", item, maxsplit=1) + [""])[:2]
                name = alias.strip() or expr.strip()
                expr = expr.strip()
                items.append((name, self.expr(expr)))
                self.defined.add(name)
            return ("fields", items)
        if verb == "filter":
            m = re.fullmatch(rf"({IDENT})\s*(=|!=)\s*\"([^\"]*)\"", rest)
            if m:
                f, op, value = self.expr(m.group(1)), m.group(2), m.group(3)
                return ("filter", (lambda e: f(e) == value) if op == "=" else (lambda e: f(e) != value))
            m = re.fullmatch(rf"({IDENT})\s+like\s+/(.*)/", rest)
            if m:
                f, regex = self.expr(m.group(1)), re.compile(m.group(2))
                return ("filter", lambda e: isinstance(f(e), str) and regex.search(f(e)) is not None)
            self.bad(f"unsupported filter: {rest!r}")
        if verb == "stats":
            aggs_text, _, by_text = rest.partition(" by ")
            aggs = []
            for item in split_top(aggs_text, ","):
                m = re.fullmatch(r"(count|sum|min|max|avg)\((\*|[^)]*)\)(?:\s+as\s+(\w+))?", item)
                if not m:
                    self.bad(f"unsupported aggregate: {item!r}")
                fn, arg, alias = m.groups()
                f = None if arg == "*" else self.expr(arg)
                aggs.append((alias or item, fn, f))
            by = [(b, self.expr(b)) for b in split_top(by_text, ",")] if by_text else []
            for name, _, _ in aggs:
                self.defined.add(name)
            return ("stats", (aggs, by))
        if verb == "sort":
            m = re.fullmatch(rf"({IDENT})(?:\s+(asc|desc))?", rest)
            if not m:
                self.bad(f"unsupported sort: {rest!r}")
            return ("sort", (m.group(1), m.group(2) == "desc"))
        if verb == "limit":
            return ("limit", int(rest))
        self.bad(f"unsupported command: {verb!r}")

    def run(self, events):
        rows, projected, matched = [dict(e) for e in events], None, None
        for verb, arg in self.commands:
            if verb == "fields":
                for row in rows:
                    for name, f in arg:
                        row[name] = f(row)
                projected = [name for name, _ in arg]
            elif verb == "filter":
                rows = [r for r in rows if arg(r)]
                matched = rows
            elif verb == "stats":
                matched = rows if matched is None else matched
                aggs, by = arg
                groups = {}
                for r in rows:
                    key = tuple(f(r) for _, f in by)
                    groups.setdefault(key, []).append(r)
                rows = []
                for key, members in groups.items():
                    out = {name: value for (name, _), value in zip(by, key)}
                    for name, fn, f in aggs:
                        values = [v for v in (f(m) for m in members) if v is not None] if f else members
                        if fn == "count":
                            out[name] = len(values)
                        elif not f:
                            self.bad(f"{fn}(*)")
                        else:
                            out[name] = {"sum": sum, "min": min, "max": max,
                                         "avg": lambda v: sum(v) / len(v)}[fn](values) if values else None
                    rows.append(out)
                projected = [b for b, _ in by] + [a for a, _, _ in aggs]
            elif verb == "sort":
                name, desc = arg
                rows.sort(key=lambda r: (r.get(name) is None, r.get(name)), reverse=desc)
            elif verb == "limit":
                rows = rows[:arg]
        return [{k: r.get(k) for k in projected} if projected else r for r in rows], matched


def resolve(node):
    """A Fn::Sub variable of the dashboard, with every reference in it as `x`."""
    if isinstance(node, str):
        return re.sub(r"\$\{[^}]*\}", "x", node)
    (fn, arg), = node.items()
    if fn == "Fn::Join":
        return arg[0].join(resolve(a) for a in arg[1])
    if fn == "Fn::Sub":
        return resolve(arg)
    if fn == "Fn::If":
        return resolve(arg[1])
    fail(f"the dashboard's variables use {fn}, which tests/insights.py cannot resolve")


def get(event, name):
    return event.get("timestamp") if name == "@timestamp" else event.get(name)


def main(argv):
    allow = set()
    args = []
    queries_only = False
    it = iter(argv)
    for a in it:
        if a == "--allow-missing":
            allow.add(next(it))
        elif a == "--queries-only":
            queries_only = True
        else:
            args.append(a)
    if len(args) != 2:
        fail(__doc__.strip().splitlines()[2].strip())
    template_path, log_path = args
    with open(template_path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=CfnLoader)
    lines = []
    with open(log_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError as e:
                    fail(f"{log_path}:{n}: not JSON ({e})")
    events = [e for e in lines if "event" in e and "_aws" not in e]
    records = [e for e in lines if "_aws" in e]
    if not events or not (records or queries_only):
        fail(f"{log_path}: {len(events)} audit events and {len(records)} EMF records; both are needed")

    # The metric names and dimension sets the records declare.
    declared = set()
    for r in records:
        for d in r["_aws"]["CloudWatchMetrics"]:
            for m in d["Metrics"]:
                for dims in d["Dimensions"]:
                    declared.add((d["Namespace"], m["Name"], tuple(sorted(dims))))

    def metric(where, namespace, name, dims):
        if not queries_only and namespace == NAMESPACE and (namespace, name, tuple(sorted(dims))) not in declared:
            fail(f"{where}: no EMF record declares {name} with dimensions {sorted(dims)} "
                 f"(declared: {sorted(n for _, n, _ in declared)})")

    queries = []
    for logical, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm":
            metric(logical, props["Namespace"], props["MetricName"], [d["Name"] for d in props.get("Dimensions", [])])
        elif res["Type"] == "AWS::Logs::QueryDefinition":
            name = props["Name"]["Fn::Sub"] if isinstance(props["Name"], dict) else props["Name"]
            queries.append(Query(name.rsplit("/", 1)[-1], props["QueryString"]))
        elif res["Type"] == "AWS::CloudWatch::Dashboard":
            body, values = (props["DashboardBody"]["Fn::Sub"] + [{}])[:2] \
                if isinstance(props["DashboardBody"]["Fn::Sub"], list) else (props["DashboardBody"]["Fn::Sub"], {})
            body = re.sub(r"\$\{([^}]*)\}", lambda m: resolve(values[m.group(1)]) if m.group(1) in values else "x", body)
            try:
                widgets = json.loads(body)["widgets"]
            except ValueError as e:
                fail(f"{logical}: DashboardBody is not JSON ({e})")
            for w in widgets:
                p = w["properties"]
                if w["type"] == "metric":
                    for m in p["metrics"]:
                        metric(f"{logical} widget {p['title']!r}", m[0], m[1], m[2::2])
                elif w["type"] == "log":
                    source, _, rest = p["query"].partition("|")
                    if not source.strip().startswith("SOURCE "):
                        fail(f"{logical} widget {p['title']!r}: a log query starts with SOURCE")
                    queries.append(Query(f"dashboard: {p['title']}", rest))
    if not queries:
        fail(f"{template_path}: no query")

    for q in queries:
        rows, matched = q.run(events)
        matched = events if matched is None else matched
        for field in [] if queries_only else sorted(q.used - allow - {"@timestamp"}):
            if not any(field in e for e in matched):
                fail(f"query {q.name!r}: no event it selects has the field {field!r}")
        if not rows and not queries_only:
            fail(f"query {q.name!r}: no row from {len(events)} events")
        print(json.dumps({"query": q.name, "rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1:])
