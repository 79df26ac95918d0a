"""Interoperability test: a Python client generated with grpcio-tools from Switchboard's .proto
logs an agent in, makes a call, holds, retrieves and hangs up, and reads the events.

Usage: interop.py PROTO_DIR ADDRESS TOKEN LINE. Exits non-zero, saying why, on any failure.
"""

import os
import sys
import tempfile
import threading
import time


def generate(proto_dir, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "switchboard/v1/switchboard.proto",
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)


def wait_for(what, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def main():
    proto_dir, address, token, line = sys.argv[1:5]
    out_dir = tempfile.mkdtemp(prefix="switchboard-interop-")
    generate(proto_dir, out_dir)
    import grpc
    from switchboard.v1 import switchboard_pb2 as pb
    from switchboard.v1 import switchboard_pb2_grpc as rpc

    channel = grpc.insecure_channel(address)
    auth = [("authorization", f"Bearer {token}")]
    agents = rpc.AgentsStub(channel)
    calls = rpc.CallControlStub(channel)
    events = rpc.EventsStub(channel)

    # Read this line's events in the background.
    seen = []
    stream = events.Subscribe(pb.SubscribeRequest(lines=[line]), metadata=auth)

    def read():
        try:
            for event in stream:
                seen.append(event)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                print(f"event stream ended: {error.code()}: {error.details()}", file=sys.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for("the snapshot", lambda: any(e.WhichOneof("event") == "snapshot_complete" for e in seen))

    # A request without a token is refused as gRPC says.
    try:
        agents.GetLine(pb.GetLineRequest(line=line))
        sys.exit("a request without a token was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error

    logged_in = agents.LogIn(pb.LogInRequest(request_id="py-login", line=line, agent_id="py-agent", roles=["agent"]), metadata=auth)
    assert logged_in.agent.agent_id == "py-agent", logged_in

    call_id = calls.MakeCall(pb.MakeCallRequest(request_id="py-dial", line=line, number="+4930765432"), metadata=auth).call_id

    def line_state():
        current = agents.GetLine(pb.GetLineRequest(line=line), metadata=auth)
        return {c.call_id: c.state for c in current.calls}.get(call_id, "")

    wait_for("the line to ring first", lambda: line_state() == "initiated")
    calls.Answer(pb.CallRequest(line=line, call_id=call_id), metadata=auth)
    # The simulated far end answers by itself.
    wait_for("the call to connect", lambda: line_state() == "connected")
    calls.Hold(pb.CallRequest(line=line, call_id=call_id), metadata=auth)
    wait_for("hold", lambda: line_state() == "held")
    try:
        calls.Hold(pb.CallRequest(line=line, call_id=call_id), metadata=auth)
        sys.exit("holding a held call was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    calls.Retrieve(pb.CallRequest(line=line, call_id=call_id), metadata=auth)
    wait_for("retrieve", lambda: line_state() == "connected")
    calls.HangUp(pb.CallRequest(line=line, call_id=call_id), metadata=auth)

    def logged():
        return [e.call_log for e in seen if e.WhichOneof("event") == "call_log" and e.call_log.root_call_id == call_id]

    wait_for("the call log record", lambda: len(logged()) == 1)
    record = logged()[0]
    assert record.outcome == "answered" and record.agent_id == "py-agent" and record.direction == "outbound", record
    sequences = [e.sequence for e in seen if e.WhichOneof("event") != "snapshot_complete"]
    assert sequences == sorted(sequences), sequences
    stream.cancel()
    print(f"interop ok: call {call_id}, {len(seen)} events, talk {record.talk_seconds}s")


if __name__ == "__main__":
    main()
