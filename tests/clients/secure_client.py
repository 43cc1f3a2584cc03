"""A real outside client of deployd: Python grpcio over TLS (with a client
certificate when given), authenticated by a bearer token. Stubs are
generated from proto/ at test time (grpc_tools). Prints one JSON object
with what each call returned."""

import argparse
import json
import sys

import grpc


def code_of(call):
    try:
        result = call()
        return "OK", result
    except grpc.RpcError as e:  # the status a refused call carries
        return e.code().name, e.details()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stubs", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--token", required=True)
    p.add_argument("--jwt", required=True)
    p.add_argument("--expired-jwt", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--source", required=True)
    a = p.parse_args()
    sys.path.insert(0, a.stubs)
    from deployd.v1 import deployd_pb2 as pb
    from deployd.v1 import deployd_pb2_grpc as rpc

    read = lambda f: open(f, "rb").read() if f else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(a.ca),
        private_key=read(a.key),
        certificate_chain=read(a.cert),
    )
    channel = grpc.secure_channel(
        a.target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    stub = rpc.DeployerStub(channel)
    auth = lambda t: [("authorization", "Bearer " + t)]
    target = pb.Target(project=a.project, region="us-central1", service="py-app")
    out = {}

    def preflight():
        events = list(stub.Preflight(pb.PreflightRequest(target=target), metadata=auth(a.token), timeout=60))
        return events[-1].outcome.success
    out["preflight"] = code_of(preflight)

    def deploy():
        req = pb.DeployRequest(target=target, source=pb.Source(local_path=a.source))
        events = list(stub.Deploy(req, metadata=auth(a.jwt), timeout=120))
        return {"id": events[0].deployment_id, "success": events[-1].outcome.success}
    out["deploy"] = code_of(deploy)
    if out["deploy"][0] == "OK":
        dep_id = out["deploy"][1]["id"]
        out["caller"] = code_of(
            lambda: stub.GetDeployment(pb.GetDeploymentRequest(id=dep_id), metadata=auth(a.token), timeout=10).caller
        )

    out["bad_token"] = code_of(
        lambda: stub.ListDeployments(pb.ListDeploymentsRequest(), metadata=auth(a.token + "x"), timeout=10)
    )
    out["expired_jwt"] = code_of(
        lambda: stub.ListDeployments(pb.ListDeploymentsRequest(), metadata=auth(a.expired_jwt), timeout=10)
    )
    out["other_project"] = code_of(
        lambda: stub.ListDeployments(
            pb.ListDeploymentsRequest(project="someone-elses"), metadata=auth(a.token), timeout=10
        )
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
