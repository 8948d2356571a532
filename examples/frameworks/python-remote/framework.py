#!/usr/bin/env python3
"""A remote wasmos framework in Python, speaking the Scheduler API over gRPC.

It uploads one Wasm module, subscribes as a framework, launches N tasks of
that module on the offers it receives (packing as many as fit into each offer,
declining the rest), acknowledges status updates, reconciles once when every
task has ended, and prints one JSON line per task plus a summary line.

    python3 framework.py --master 127.0.0.1:5050 --module hello.wasm --tasks 20

Exit status: 0 when all N tasks finished with exit code 0; 1 when a task did
not (or reconciliation disagreed); 2 for usage or setup errors (bad arguments,
grpcio missing, master unreachable); 3 when --timeout ran out.

The Python stubs are generated at start-up from wasmos.proto with grpc_tools
(no generated code is checked in), so this file is the whole example.
"""

import argparse
import hashlib
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto", "proto", "wasmos", "v1", "wasmos.proto"))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
PROG = "python-remote"

MIB = 1 << 20
CHUNK = 1 << 20  # upload chunk size

EXIT_OK, EXIT_TASKS, EXIT_SETUP, EXIT_TIMEOUT = 0, 1, 2, 3


class Reconnect(Exception):
    """The master went away or is not the leader: find the leader, subscribe again."""


class Fatal(Exception):
    """An error that ends the run with a message and an exit code."""

    def __init__(self, message, code=EXIT_SETUP):
        super().__init__(message)
        self.code = code


def log(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- stubs


def load_stubs(proto_path):
    """Generates (or reuses cached) Python stubs for wasmos.proto and imports them."""
    try:
        import grpc  # noqa: F401
        from grpc_tools import protoc
    except ImportError as e:
        raise Fatal(
            f"{e.name or 'grpc'} is not installed; run `python3 -m pip install -r {REQUIREMENTS}` "
            "(or `cargo xtask setup`)"
        )
    proto_path = os.path.abspath(proto_path)
    if not os.path.isfile(proto_path):
        raise Fatal(f"cannot find the proto file {proto_path}; pass --proto PATH/wasmos.proto")
    # The proto's package is wasmos.v1, so its import root is two levels up.
    v1_dir = os.path.dirname(proto_path)
    include = os.path.dirname(os.path.dirname(v1_dir))
    rel = os.path.relpath(proto_path, include)
    if rel.replace(os.sep, "/") != "wasmos/v1/wasmos.proto":
        raise Fatal(f"{proto_path} should live at <root>/wasmos/v1/wasmos.proto (its package is wasmos.v1)")
    with open(proto_path, "rb") as f:
        source = f.read()
    import grpc_tools

    version = getattr(grpc_tools, "__version__", None) or _dist_version("grpcio-tools")
    key = hashlib.sha256(source + b"\0" + str(version).encode()).hexdigest()[:16]
    out = os.path.join(_cache_root(), key)
    if not os.path.isfile(os.path.join(out, "wasmos", "v1", "wasmos_pb2_grpc.py")):
        parent = os.path.dirname(out)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="gen-", dir=parent)
        grpc_include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        argv = ["grpc_tools.protoc", f"-I{include}", f"-I{grpc_include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", proto_path]
        rc = protoc.main(argv)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Fatal(f"grpc_tools.protoc failed on {proto_path} (exit {rc})")
        try:
            os.rename(tmp, out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run got there first
    sys.path.insert(0, out)
    from wasmos.v1 import wasmos_pb2, wasmos_pb2_grpc

    return wasmos_pb2, wasmos_pb2_grpc


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "wasmos", "python-stubs")
    try:
        os.makedirs(root, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), f"wasmos-python-stubs-{os.getuid() if hasattr(os, 'getuid') else 0}")


# ---------------------------------------------------------------- framework


TERMINAL = {"finished", "failed", "killed", "error", "lost", "dropped", "gone"}


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def rpc(self, cap=10.0):
        """A per-call timeout that never outlives the overall deadline."""
        left = self.left()
        if left <= 0:
            raise TimeoutError
        return min(cap, left)


class Framework:
    def __init__(self, args, pb, pb_grpc, grpc):
        self.args = args
        self.pb = pb
        self.grpc = grpc
        self.pb_grpc = pb_grpc
        self.deadline = Deadline(args.timeout)
        self.channel = None
        self.open(args.masters[0])
        # The token goes with every call (plaintext masters take it too).
        self.md = [("authorization", f"Bearer {args.token}")] if args.token else []
        self.events = queue.Queue()
        self.failovers = 0
        self.stream = None
        self.framework_id = ""
        run = uuidlib.uuid4().hex[:8]
        self.task_ids = [f"{args.name}-{run}-{i}" for i in range(args.tasks)]
        self.pending = list(self.task_ids)  # not launched yet
        self.final = {}  # task_id -> TaskStatus of its terminal update
        self.state = {}  # task_id -> last state name
        self.need = {"cpus": round(args.cpus * 1000), "mem": args.mem_mib * MIB * 1000}
        self.acks = 0
        self.offers_seen = 0
        self.declined = 0

    # -- helpers

    def open(self, address):
        """A channel to the master at `address` (host:port) and its stubs."""
        if self.channel is not None:
            self.channel.close()
        grpc = self.grpc
        options = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]
        if self.args.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self.args.ca_pem.encode())
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.address = address
        self.scheduler = self.pb_grpc.SchedulerStub(self.channel)
        self.artifacts = self.pb_grpc.ArtifactsStub(self.channel)

    def find_leader(self):
        """With several masters (`--master a,b,c`), the one that leads: any
        master answers Masters.List (followers too) with the leader's URL."""
        if len(self.args.masters) == 1:
            return
        last = "no master answered"
        while True:
            for address in self.args.masters:
                self.open(address)
                try:
                    r = self.pb_grpc.MastersStub(self.channel).List(self.pb.ListMastersRequest(), timeout=self.deadline.rpc(2.0))
                except self.grpc.RpcError as e:
                    last = f"{address}: {rpc_msg(e)}"
                    continue
                if r.leader:
                    leader = r.leader.split("://", 1)[-1].rstrip("/")
                    if leader != address:
                        self.open(leader)
                    log(f"the leader is {leader} (epoch {r.epoch})")
                    return
                last = f"{address}: no master leads yet"
            time.sleep(min(0.2, self.deadline.left()))
            if self.deadline.left() <= 0.2:
                raise Fatal(f"no leader among {','.join(self.args.masters)}: {last}")

    def reconnect(self):
        """After the master went away: the new leader, subscribed again with
        our framework id, then asked for the state of every task launched."""
        if self.stream is not None:
            self.stream.cancel()
        self.events = queue.Queue()
        self.find_leader()
        self.subscribe()
        launched = [t for t in self.task_ids if t not in self.pending and t not in self.final]
        if launched:
            self.call(reconcile=self.pb.Call.Reconcile(task_ids=launched))

    def multi(self):
        return len(self.args.masters) > 1

    def state_name(self, value):
        return self.pb.TaskState.Name(value).removeprefix("TASK_").lower()

    def call(self, **kw):
        try:
            self.scheduler.Call(
                self.pb.Call(framework_id=self.framework_id, **kw), timeout=self.deadline.rpc(), metadata=self.md
            )
        except self.grpc.RpcError as e:
            if self.multi() and e.code() == self.grpc.StatusCode.UNAVAILABLE:
                raise Reconnect()
            raise Fatal(f"scheduler call {next(iter(kw))} failed: {rpc_msg(e)}", EXIT_TASKS)

    def next_event(self):
        try:
            item = self.events.get(timeout=self.deadline.left())
        except queue.Empty:
            raise TimeoutError
        if isinstance(item, Exception):
            raise item
        return item

    # -- steps

    def connect(self):
        try:
            self.grpc.channel_ready_future(self.channel).result(timeout=min(5.0, self.deadline.left()))
        except self.grpc.FutureTimeoutError:
            raise Fatal(
                f"cannot reach the master at {self.address}; is it running? "
                "(start one with `wasmos dev`; it writes the client config this script reads)"
            )

    def upload(self):
        with open(self.args.module, "rb") as f:
            data = f.read()
        if data[:4] != b"\0asm":
            raise Fatal(f"{self.args.module} is not a Wasm module (no \\0asm header)")
        sha = hashlib.sha256(data).hexdigest()
        try:
            has = self.artifacts.Has(self.pb.HasRequest(sha256=sha), timeout=self.deadline.rpc(), metadata=self.md)
            if has.present:
                log(f"module {sha[:12]} already on the master ({has.size} bytes); not uploading")
                return sha

            def chunks():
                for i in range(0, max(len(data), 1), CHUNK):
                    yield self.pb.Chunk(sha256=sha if i == 0 else "", data=data[i : i + CHUNK])

            r = self.artifacts.Upload(chunks(), timeout=self.deadline.rpc(60.0), metadata=self.md)
        except self.grpc.RpcError as e:
            raise Fatal(f"uploading {self.args.module}: {rpc_msg(e)}")
        if r.sha256 != sha:
            raise Fatal(f"the master stored {r.sha256}, expected {sha}")
        log(f"uploaded module {sha[:12]} ({r.size} bytes)")
        return sha

    def subscribe(self):
        info = self.pb.FrameworkInfo(name=self.args.name, role=self.args.role, framework_id=self.framework_id)
        if self.framework_id:
            info.failover_timeout_s = 600.0
        stream = self.scheduler.Subscribe(self.pb.SubscribeRequest(framework=info), metadata=self.md)
        self.stream, events, multi = stream, self.events, self.multi()

        def pump():
            try:
                for ev in stream:
                    events.put(ev)
                events.put(Reconnect() if multi else Fatal("the master closed the event stream", EXIT_TASKS))
            except self.grpc.RpcError as e:
                if e.code() == self.grpc.StatusCode.CANCELLED:
                    return
                if multi and e.code() == self.grpc.StatusCode.UNAVAILABLE:
                    events.put(Reconnect())
                else:
                    events.put(Fatal(f"event stream: {rpc_msg(e)}", EXIT_TASKS))

        threading.Thread(target=pump, name="events", daemon=True).start()
        try:
            ev = self.next_event()
        except Reconnect:
            raise
        except Fatal as e:
            raise Fatal(f"cannot subscribe: {e}", EXIT_SETUP)
        if ev.WhichOneof("event") != "subscribed":
            raise Fatal(f"expected SUBSCRIBED as the first event, got {ev.WhichOneof('event')}", EXIT_TASKS)
        self.framework_id = ev.subscribed.framework_id
        log(f"subscribed as framework {self.framework_id} in role {self.args.role or 'default'}")

    def fits(self, offer):
        have = {s.name: s.milli for s in offer.resources.scalars}
        n = len(self.pending)
        for name, need in self.need.items():
            if need > 0:
                n = min(n, have.get(name, 0) // need)
        return max(0, n)

    def on_offers(self, offers):
        for offer in offers:
            self.offers_seen += 1
            n = self.fits(offer)
            if n == 0:
                # Nothing (more) to launch here: hand it back for a while.
                refuse = self.args.refuse_seconds if self.pending else 3600.0
                self.call(decline=self.pb.Call.Decline(offer_ids=[offer.offer_id], filters=self.pb.Filters(refuse_seconds=refuse)))
                self.declined += 1
                continue
            batch, self.pending = self.pending[:n], self.pending[n:]
            specs = [self.task_spec(t) for t in batch]
            # Leftovers of the offer go back to the allocator; refuse them only
            # once there is nothing left to launch.
            refuse = 0.0 if self.pending else 3600.0
            self.call(
                accept=self.pb.Call.Accept(offer_ids=[offer.offer_id], launch=specs, filters=self.pb.Filters(refuse_seconds=refuse))
            )
            log(f"launched {len(batch)} task(s) on agent {offer.agent_id} ({len(self.pending)} to go)")
            if not self.pending:
                self.call(suppress=self.pb.Call.Suppress())

    def task_spec(self, task_id):
        pb = self.pb
        args = self.args.task_args or [task_id]
        return pb.TaskSpec(
            task_id=task_id,
            name=self.args.name,
            module_sha256=self.sha,
            args=args,
            resources=pb.Resources(scalars=[pb.Scalar(name=k, milli=v) for k, v in self.need.items()]),
            limits=pb.Limits(),  # zero: the master's defaults
        )

    def on_update(self, st):
        if st.uuid:
            self.call(acknowledge=self.pb.Call.Acknowledge(agent_id=st.agent_id, task_id=st.task_id, uuid=st.uuid))
            self.acks += 1
        if st.task_id not in self.state or st.task_id in self.final:
            return  # not ours, or a duplicate after the end (delivery is at least once)
        name = self.state_name(st.state)
        self.state[st.task_id] = name
        if name in TERMINAL:
            self.final[st.task_id] = st
            print(json.dumps(task_line(st, name)), flush=True)

    def reconcile(self):
        """One implicit reconciliation, closed by an explicit one for an unknown id.

        Implicit reconciliation answers with the latest state of the tasks the
        master still tracks for us (terminal, acknowledged tasks may be left
        out, as in Mesos). Events arrive in order, so the answer for the
        made-up id marks the end of the implicit answers."""
        marker = f"{self.args.name}-reconcile-{uuidlib.uuid4().hex[:8]}"
        self.call(reconcile=self.pb.Call.Reconcile())
        self.call(reconcile=self.pb.Call.Reconcile(task_ids=[marker]))
        answers, problems = 0, []
        while True:
            ev = self.next_event()
            kind = ev.WhichOneof("event")
            if kind == "error":
                raise Fatal(f"the master reported: {ev.error.message}", EXIT_TASKS)
            if kind != "update":
                continue
            st = ev.update.status
            name = self.state_name(st.state)
            if st.task_id == marker:
                if name not in ("lost", "gone", "unreachable"):
                    problems.append(f"reconciling unknown task {marker} answered {name}, expected lost")
                break
            if st.reason != "reconciliation":
                self.on_update(st)  # a late regular update
                continue
            answers += 1
            want = self.state.get(st.task_id)
            if want is None:
                problems.append(f"reconciliation reported {st.task_id}, which this framework never launched")
            elif name != want:
                problems.append(f"reconciliation says {st.task_id} is {name}, but its last update said {want}")
        for p in problems:
            log(p)
        return answers, problems

    def run(self):
        self.find_leader()
        self.connect()
        self.sha = self.upload()
        self.subscribe()
        for t in self.task_ids:
            self.state[t] = "pending"
        while len(self.final) < len(self.task_ids):
            try:
                ev = self.next_event()
                kind = ev.WhichOneof("event")
                if kind == "offers":
                    self.on_offers(ev.offers.offers)
                elif kind == "update":
                    self.on_update(ev.update.status)
                elif kind == "error":
                    raise Fatal(f"the master reported: {ev.error.message}", EXIT_TASKS)
                # rescind: offers are answered at once, so nothing is held; heartbeat: nothing to do
            except Reconnect:
                log("lost the master; looking for the leader")
                while True:
                    try:
                        self.reconnect()
                        self.failovers += 1
                        break
                    except Reconnect:
                        time.sleep(min(0.2, self.deadline.left()))
        answers, problems = self.reconcile()
        try:
            self.call(teardown=self.pb.Call.Teardown())
        except Fatal as e:
            log(f"teardown: {e}")
        return answers, problems

    def close(self):
        if self.stream is not None:
            self.stream.cancel()
        self.channel.close()


def task_line(st, state):
    out = st.outcome
    has_outcome = st.HasField("outcome")
    return {
        "task_id": st.task_id,
        "state": state,
        "exit_code": out.exit_code if has_outcome and out.HasField("exit_code") else None,
        "stdout": out.stdout.decode("utf-8", "replace") if has_outcome else "",
        "agent_id": st.agent_id or None,
        "reason": st.reason or None,
        "message": st.message or None,
    }


def rpc_msg(e):
    try:
        code, details = e.code(), e.details()
    except Exception:
        return str(e)
    if code.name == "UNAVAILABLE":
        return f"the master is unavailable ({details}); is it still running?"
    if code.name == "DEADLINE_EXCEEDED":
        return "the master did not answer in time"
    return f"{code.name.lower()}: {details}"


def read_client_config(p):
    """The client config `wasmos dev` writes ($WASMOS_CONFIG or ~/.config/wasmos/config.json), or {}."""
    path = os.environ.get("WASMOS_CONFIG")
    if not path:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        path = os.path.join(base, "wasmos", "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        p.error(f"client config {path}: {e}; fix or delete it")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="framework.py",
        description="A remote wasmos framework: runs N copies of a Wasm module through the Scheduler API.",
        epilog="Arguments after `--` are passed to every task (default: the task's own id).",
    )
    p.add_argument("--master", default=None,
                   help="master address, https://host:port (http:// for an --insecure master), or several "
                        "comma-separated (masters on etcd: it follows the leader; default: "
                        "$WASMOS_MASTER, else the client config's, else https://127.0.0.1:5050)")
    p.add_argument("--ca-cert", default=None,
                   help="the master's CA certificate, PEM (default: $WASMOS_CA_CERT, else the client config's)")
    p.add_argument("--token", default=None,
                   help="a token to call with (default: $WASMOS_TOKEN, else the client config's)")
    p.add_argument("--module", required=True, help="the .wasm module to run")
    p.add_argument("--tasks", type=int, default=1, help="how many tasks to launch (default 1)")
    p.add_argument("--role", default="default", help="the framework's role (default: default)")
    p.add_argument("--name", default=PROG, help=f"framework name, also the task id prefix (default {PROG})")
    p.add_argument("--cpus", type=float, default=0.1, help="cpus per task (default 0.1)")
    p.add_argument("--mem-mib", type=int, default=64, help="memory per task in MiB (default 64)")
    p.add_argument("--refuse-seconds", type=float, default=1.0,
                   help="how long a declined offer stays away (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    p.add_argument("--proto", default=DEFAULT_PROTO, help="path to wasmos/v1/wasmos.proto (default: the repo's)")
    argv = list(argv)
    task_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, task_args = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    a.task_args = task_args
    config = read_client_config(p)
    a.master = a.master or os.environ.get("WASMOS_MASTER") or config.get("master") or "https://127.0.0.1:5050"
    a.tls = not a.master.startswith("http://")
    a.masters = [m.strip().split("://", 1)[-1].rstrip("/") for m in a.master.split(",") if m.strip()]
    if not a.masters:
        p.error("--master is empty; give host:port (or several, comma-separated)")
    a.master = a.masters[0]
    ca_file = a.ca_cert or os.environ.get("WASMOS_CA_CERT")
    if ca_file:
        try:
            with open(ca_file) as f:
                a.ca_pem = f.read()
        except OSError as e:
            p.error(f"cannot read the CA certificate {ca_file}: {e}")
    else:
        a.ca_pem = config.get("ca_pem")
    if a.tls and not a.ca_pem:
        p.error("the master speaks TLS but no CA certificate is known; pass --ca-cert (the master's STATE_DIR/tls/ca.pem)")
    a.token = a.token or os.environ.get("WASMOS_TOKEN") or config.get("token")
    if a.tasks < 1:
        p.error("--tasks must be at least 1")
    if a.cpus < 0 or a.mem_mib < 0 or (a.cpus == 0 and a.mem_mib == 0):
        p.error("each task needs some --cpus or --mem-mib")
    if a.timeout <= 0:
        p.error("--timeout must be positive")
    if not os.path.isfile(a.module):
        p.error(f"cannot read module {a.module}; check the path (guests are built by `cargo xtask guests`)")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/")
    if not a.name or not set(a.name) <= allowed:
        p.error("--name may use only letters, digits and - _ . : / (it prefixes task ids)")
    return a


def main(argv):
    args = parse_args(argv)
    started = time.monotonic()
    try:
        pb, pb_grpc = load_stubs(args.proto)
    except Fatal as e:
        log(str(e))
        return e.code
    import grpc

    fw = Framework(args, pb, pb_grpc, grpc)
    code, error, answers, problems = EXIT_OK, None, 0, []
    try:
        answers, problems = fw.run()
    except Fatal as e:
        code, error = e.code, str(e)
    except TimeoutError:
        code = EXIT_TIMEOUT
        error = (f"timed out after {args.timeout:g}s with {len(fw.final)} of {args.tasks} task(s) ended "
                 f"({len(fw.pending)} never launched); raise --timeout or check `wasmos agents`")
    except KeyboardInterrupt:
        code, error = EXIT_TASKS, "interrupted"
    finally:
        fw.close()
    if error:
        log(error)
    finished = sum(
        1 for st in fw.final.values()
        if fw.state_name(st.state) == "finished" and st.outcome.HasField("exit_code") and st.outcome.exit_code == 0
    )
    ok = code == EXIT_OK and finished == args.tasks and not problems
    if code == EXIT_OK and not ok:
        code = EXIT_TASKS
    states = {}
    for t in fw.task_ids:
        s = fw.state.get(t, "pending")
        states[s] = states.get(s, 0) + 1
    summary = {
        "framework_id": fw.framework_id or None,
        "tasks": args.tasks,
        "finished_ok": finished,
        "states": states,
        "acknowledged": fw.acks,
        "offers": fw.offers_seen,
        "declined": fw.declined,
        "reconciled": answers,
        "failovers": fw.failovers,
        "reconcile_problems": problems,
        "elapsed_s": round(time.monotonic() - started, 3),
        "ok": ok,
    }
    if error:
        summary["error"] = error
    print(json.dumps({"summary": summary}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
