"""``vkpy certs``: get a node's certificates from the cluster in one command (``request``), and see
what a certificate folder holds (``show``).

``request`` replaces the manual flow (openssl genrsa, openssl req, base64, a CSR manifest, kubectl
apply, kubectl certificate approve, kubectl get csr -o jsonpath | base64 -d): the key is made here
and never leaves the machine, the request is submitted, the exact approve command is printed, and
once the controller-manager has signed, the certificate, its key and a kubeconfig using them are
written (0600)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vkpy.cli.command import Command
from vkpy.errors import ConfigError

if TYPE_CHECKING:
    from vkpy.node.csr import Progress

DEFAULT_TIMEOUT = 300.0


def _say(text: str) -> None:
    print(text, flush=True)


def _reporter(kind: str, node: str, timeout: float) -> Any:
    def report(progress: Progress) -> None:
        if progress.stage == "submitted":
            what = f"{kind} certificate for system:node:{node}"
            _say(f"Submitted CertificateSigningRequest {progress.name} ({what}).")
            _say("Approve it with:")
            _say(f"    {progress.approve_command}")
            _say(f"Waiting up to {timeout:.0f} s for approval and signing...")
        elif progress.stage == "waiting":
            _say(f"  still waiting for approval ({progress.elapsed:.0f} s)")
        elif progress.stage == "approved":
            if progress.message:
                _say(f"Approved ({progress.message}); waiting for the signer...")
            else:
                _say(f"  approved; still waiting for the signer ({progress.elapsed:.0f} s)")
        elif progress.stage == "issued":
            _say(f"Issued after {progress.elapsed:.1f} s.")

    return report


def _expires(info: Any) -> str:
    left = info.not_after - datetime.datetime.now(datetime.UTC)
    return f"{info.not_after:%Y-%m-%d %H:%M:%S} UTC (in {_human(left.total_seconds())})"


def _human(seconds: float) -> str:
    if seconds < 0:
        return "the past"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


async def _request(args: argparse.Namespace) -> int:
    from vkpy.kube import KubeClient
    from vkpy.node.certificates import CLIENT, SERVING, CertificateStore
    from vkpy.node.credentials import CertificatePolicy, obtain
    from vkpy.runtime import advertise_address

    node: str = args.node
    out: Path = args.out
    policy = CertificatePolicy(expiration=args.expiration)
    names = [*args.ip, *args.dns] or [advertise_address("0.0.0.0", None)]  # noqa: S104 - not a bind
    store = CertificateStore(out)
    bootstrap = await KubeClient.from_kubeconfig(args.kubeconfig, identity=f"{args.kubeconfig or 'default'}")
    try:
        client = await obtain(
            bootstrap,
            store,
            CLIENT,
            node,
            policy=policy,
            timeout=args.timeout,
            on_progress=_reporter("client", node, args.timeout),
        )
        configuration = bootstrap.api.configuration
        ca_file = configuration.ssl_ca_cert
        ca = await asyncio.to_thread(Path(ca_file).read_bytes) if ca_file else None
        await asyncio.to_thread(
            store.write_kubeconfig, node, str(configuration.host), ca, configuration.tls_server_name
        )
    finally:
        await bootstrap.close()
    _say(f"Wrote {client.path} (certificate and key, 0600), valid until {_expires(client.info)}")
    _say(f"Wrote {store.kubeconfig} (authenticates as system:node:{node})")
    serving = None
    if not args.client_only:
        _say("")
        # kubelet-serving requests are asked for by the node itself: approvers check that the
        # requester is the node the certificate names.
        own = await KubeClient.from_kubeconfig(store.kubeconfig, identity=f"node:{node}")
        try:
            serving = await obtain(
                own,
                store,
                SERVING,
                node,
                names=names,
                policy=policy,
                timeout=args.timeout,
                on_progress=_reporter("serving", node, args.timeout),
            )
        finally:
            await own.close()
        sans = ", ".join((*serving.info.ip_addresses, *serving.info.dns_names))
        _say(f"Wrote {serving.path} (certificate and key for {sans}, 0600)")
        _say(f"  valid until {_expires(serving.info)}")
    _say("")
    _say("Use them in vkpy.yaml:")
    _say("  nodes:")
    _say(f"    - name: {node}")
    _say(f"      kubeconfig: {store.kubeconfig}")
    if serving is not None:
        _say("  kubelet:")
        _say(f"    tls_cert: {serving.path}")
        _say(f"    tls_key: {serving.path}")
    if out.name == node:
        _say(f"or let vkpy renew them itself: certificates: {{dir: {out.parent}}}")
    return 0


def _run_request(args: argparse.Namespace) -> int:
    args.out = (args.out or Path(args.node)).expanduser().absolute()
    return asyncio.run(_request(args))


def _run_show(args: argparse.Namespace) -> int:
    from vkpy.node.certificates import CLIENT, SERVING, CertificateStore

    store = CertificateStore(args.dir)
    found = False
    for kind in (CLIENT, SERVING):
        stored = store.load(kind)
        path = store.path(kind)
        if stored is None:
            if path.exists():
                _say(f"{path}: unreadable, or the certificate does not match its key")
            continue
        found = True
        info = stored.info
        _say(f"{path}:")
        _say(f"  subject:   CN={info.common_name}, O={','.join(info.organizations) or '-'}")
        if info.ip_addresses or info.dns_names:
            _say(f"  names:     {', '.join((*info.ip_addresses, *info.dns_names))}")
        _say(f"  valid:     {info.not_before:%Y-%m-%d %H:%M:%S} to {_expires(info)}")
        _say(f"  serial:    {info.serial:x}")
        if store.pending_path(kind).exists():
            _say("  a renewal is waiting for approval (kubectl get csr)")
    if not found:
        print(
            f"{args.dir}: no certificates (vkpy certs request --node NAME --out {args.dir})", file=sys.stderr
        )
        return 1
    return 0


def _duration(value: str) -> float:
    from vkpy.config.convert import InvalidValue
    from vkpy.config.schema import MIN_CERTIFICATE_SECONDS, positive_duration

    try:
        seconds = positive_duration(value)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < MIN_CERTIFICATE_SECONDS:
        raise argparse.ArgumentTypeError(f"at least {MIN_CERTIFICATE_SECONDS}s (the API's minimum)")
    return seconds


def _timeout(value: str) -> float:
    from vkpy.config.convert import InvalidValue
    from vkpy.config.schema import positive_duration

    try:
        return positive_duration(value)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_name(value: str) -> str:
    from vkpy.config.convert import InvalidValue
    from vkpy.config.schema import dns_subdomain

    try:
        return dns_subdomain(value)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    request = commands.add_parser(
        "request",
        help="get a node's client and serving certificates from the cluster",
        description="Make a key, submit CertificateSigningRequests for the node's client certificate "
        "(system:node:NAME) and the kubelet API's serving certificate, print the kubectl command that "
        "approves each, wait, and write the certificates with a kubeconfig that uses them.",
    )
    request.add_argument("--node", required=True, type=_node_name, help="the node's name")
    request.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="IP",
        help="an IP address for the serving certificate (repeatable; default: this machine's address)",
    )
    request.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="a DNS name for the serving certificate"
    )
    request.add_argument("--out", type=Path, metavar="DIR", help="where to write the files (default: ./NODE)")
    request.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="FILE",
        help="credentials that may create CertificateSigningRequests: an admin's, or bootstrap "
        "credentials (default: $KUBECONFIG, ~/.kube/config)",
    )
    request.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"how long to wait for each approval (default {DEFAULT_TIMEOUT:.0f}s)",
    )
    request.add_argument(
        "--expiration",
        type=_duration,
        metavar="DURATION",
        help="the lifetime to ask for, at least 600s (default: the signer's, often a year)",
    )
    request.add_argument(
        "--client-only", action="store_true", help="only the client certificate, no serving certificate"
    )
    request.set_defaults(run=_run_request)
    show = commands.add_parser("show", help="what a certificate folder holds, and until when")
    show.add_argument("dir", type=Path, metavar="DIR", help="a folder written by `vkpy certs request`")
    show.set_defaults(run=_run_show)


def _run_group(args: argparse.Namespace) -> int:
    raise ConfigError("vkpy certs: name a command: request or show (vkpy certs --help)")


COMMAND = Command(
    name="certs",
    help="get node certificates from the cluster (request) and inspect them (show)",
    run=_run_group,
    configure=_configure,
)
