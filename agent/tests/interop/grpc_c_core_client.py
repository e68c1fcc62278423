"""A kubelet-plugin client on gRPC's C core (grpcio), not Rust or Go.

Usage: grpc_c_core_client.py REGISTRATION_SOCKET DRA_SOCKET

Calls the registration service's GetInfo and the DRA service's
NodeUnprepareResources (empty: no claim) over each unix socket, the way
C-core clients name it: `unix:PATH` and `unix://PATH` (C core sends the
socket path as `:authority` for both, which h2 refuses: the agent's relay
mends it), and with the socket path itself or the `unix:` target as the
`:authority` (set through grpc.default_authority, as clients that name the
authority after their target do). Messages go as raw protobuf bytes (no generated
code). Prints one line per call: "ok <target> <authority> <bytes>" or
"fail <target> <authority> <status> <details>"; exits 1 if any failed.
"""
import sys

import grpc


def calls(reg, dra):
    # GetInfo(InfoRequest{}) and NodeUnprepareResources(NodeUnprepareResourcesRequest{})
    yield reg, "/pluginregistration.Registration/GetInfo"
    yield dra, "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources"


def main():
    reg, dra = sys.argv[1:3]
    failed = 0
    for path, method in calls(reg, dra):
        for target, authority in (
            (f"unix:{path}", None),
            (f"unix://{path}", None),
            (f"unix:{path}", path),
            (f"unix:{path}", f"unix:{path}"),
        ):
            options = [("grpc.default_authority", authority)] if authority else []
            with grpc.insecure_channel(target, options=options) as channel:
                call = channel.unary_unary(method)
                try:
                    reply = call(b"", timeout=10)
                    print(f"ok {target} {authority or '-'} {method} {reply.hex()}")
                except grpc.RpcError as e:
                    failed += 1
                    print(f"fail {target} {authority or '-'} {method} {e.code().name} {e.details()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
