"""``roost certs``: the hub's local CA and its certificates (services/kit/certs.py).

    roost certs init   --dir D [--hub-id H]    the CA and one certificate per role
    roost certs show   --dir D                 what is there and until when
    roost certs renew  --dir D [--within-days N | --all]
                                               reissue what expires soon; the CA is kept
    roost certs broker --dir D --name ADDR ... the MQTT broker's TLS certificate

Renewal and rolling the pods afterwards: docs/deploy.md, "Certificate renewal".
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


def _cmd_certs(args: argparse.Namespace) -> int:
    from services.kit.cert_renewal import DEFAULT_WITHIN_DAYS, RenewalRefused, renew
    from services.kit.certs import describe, ensure_certs, issue_broker

    if args.action == "init":
        made = ensure_certs(args.dir, args.hub_id)
        print(f"{'created' if made else 'already present'}: {args.dir}")
    elif args.action == "broker":
        issue_broker(args.dir, args.name)
        print(f"issued: {args.dir / 'mqtt-broker.pem'}")
    elif args.action == "renew":
        days = DEFAULT_WITHIN_DAYS if args.within_days is None else args.within_days
        try:
            renewed = renew(args.dir, dt.timedelta(days=days), every=args.all)
        except RenewalRefused as e:
            print(f"roost certs renew: {e}", file=sys.stderr)
            return 2
        for r in renewed:
            print(
                f"renewed {r.name}: valid until {r.new_not_after:%Y-%m-%d} "
                f"(was {r.old_not_after:%Y-%m-%d})"
            )
        if not renewed:
            print(f"nothing to renew: no certificate expires within {days} days")
    for name, cn, until in describe(args.dir):
        print(f"{name:24} CN={cn:24} valid until {until}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_dir: Path) -> None:
    certs = sub.add_parser("certs", help="the hub's local CA and per-role certificates")
    certs.add_argument(
        "action",
        choices=["init", "show", "renew", "broker"],
        help="renew: reissue the certificates that expire soon, keeping the CA; "
        "broker: issue the MQTT broker's TLS certificate (k3s components/mqtt-tls)",
    )
    certs.add_argument("--dir", type=Path, default=default_dir)
    certs.add_argument("--hub-id", default="local")
    certs.add_argument(
        "--within-days",
        type=int,
        default=None,
        help="renew: the certificates that expire within this many days (default 90)",
    )
    certs.add_argument("--all", action="store_true", help="renew: every certificate, due or not")
    certs.add_argument(
        "--name",
        action="append",
        default=[],
        help="broker: an address or host name Home Assistant connects to (repeatable)",
    )
    certs.set_defaults(func=_cmd_certs)
