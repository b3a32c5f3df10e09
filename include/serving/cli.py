"""``slipway serve`` and ``slipway keys``: the inference service's commands."""

from __future__ import annotations

import os
import sys


def cmd_serve(args) -> None:
    import shutil
    import tempfile

    import uvicorn

    if args.pipelines:
        os.environ["SLIPWAY_SERVE_PIPELINES"] = args.pipelines
    os.environ["SLIPWAY_SERVE_REFRESH_S"] = str(args.refresh_s)
    if args.pin:
        os.environ["SLIPWAY_SERVE_PIN"] = ",".join(args.pin)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its samples here; /metrics in any worker sums them.
        metrics_dir = tempfile.mkdtemp(prefix="slipway-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _adopt_keys_from_secrets()
    forwarded = os.environ.get("SLIPWAY_FORWARDED_ALLOW_IPS", "")
    print(f"[slipway] serving on http://{args.host}:{args.port} with {args.workers} worker(s)", flush=True)
    try:
        uvicorn.run(
            "include.serving.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,  # the service writes its own (JSON, no keys or identifiers)
            # The client address budgets key lookups: behind a proxy, trust its X-Forwarded-For only when
            # SLIPWAY_FORWARDED_ALLOW_IPS names it (else the peer is the client, and no header is parsed).
            proxy_headers=bool(forwarded),
            forwarded_allow_ips=forwarded or None,
            limit_concurrency=args.limit_concurrency,  # connections and requests per worker; 503 beyond
            loop="uvloop",
            http="include.serving.http:LimitedHttpToolsProtocol",  # header cap, header and body timeouts
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


#: Keys a deployment hands the service as secrets (never on a command line): the operator's admin key
#: and the key Prometheus scrapes /metrics with. Stored hashed on start; the values are never logged.
SECRET_KEYS = {"SLIPWAY_SERVING_ADMIN_KEY": ["admin"], "SLIPWAY_SERVING_METRICS_KEY": ["metrics"]}


def _adopt_keys_from_secrets() -> None:
    from include.serving.keys import KeyStore, KeyStoreError

    wanted = {var: scopes for var, scopes in SECRET_KEYS.items() if os.environ.get(var)}
    if not wanted:
        return
    store = KeyStore()
    store.start()
    for var, scopes in wanted.items():
        try:
            key = store.adopt(os.environ[var], scopes, f"from {var}", rotate=True)
        except KeyStoreError as exc:
            raise SystemExit(f"{var}: {exc}") from None
        print(f"[slipway] {var}: key {key.key_id} ({','.join(scopes)}) is active", flush=True)


def cmd_keys(args) -> None:
    from include.serving.keys import KeyStore, KeyStoreError

    store = KeyStore()
    store.start()
    if args.keys_cmd == "create":
        try:
            key, plaintext = store.create(
                [s.strip() for s in args.scopes.split(",") if s.strip()], args.pipeline, args.name or ""
            )
        except KeyStoreError as exc:
            raise SystemExit(str(exc)) from exc
        print(plaintext)
        print(
            f"key {key.key_id}: scopes {','.join(sorted(key.scopes))}, pipeline {key.pipeline or 'all'}. "
            "This is the only time the key is shown; it is stored hashed.",
            file=sys.stderr,
        )
    elif args.keys_cmd == "list":
        for key in store.list():
            state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
            print(
                f"{key.key_id}  {','.join(sorted(key.scopes)):<32} {key.pipeline or 'all':<16} "
                f"{key.created_at}  {state}  {key.name}"
            )
    elif args.keys_cmd == "revoke":
        if not store.revoke(args.key_id):
            raise SystemExit(f"no active key {args.key_id!r}; `slipway keys list` shows the keys")
        print(f"revoked {args.key_id} (replicas stop accepting it within their cache time, 5 s)")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "serve", help="the inference service: champion/challenger from the registry, over HTTP"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--pipelines", default="", help="comma-separated pipeline names (default: every valid spec)"
    )
    p.add_argument("--refresh-s", type=float, default=5.0, help="how often aliases and traffic are re-read")
    p.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="PIPELINE=VERSION",
        help="serve this version as the pipeline's champion whatever the aliases say (a sandbox)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=int,
        default=1000,
        help="connections and requests a worker takes at once; beyond, 503 (default 1000)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys of the inference service (stored hashed, with scopes)")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    c = ks.add_parser("create", help="create a key and print it once")
    c.add_argument("--scopes", required=True, help="comma-separated: predict,feedback,explain,admin,metrics")
    c.add_argument("--pipeline", default=None, help="restrict the key to one pipeline (default: all)")
    c.add_argument("--name", default="", help="who or what the key is for")
    ks.add_parser("list", help="list keys (never the key itself)")
    r = ks.add_parser("revoke", help="revoke a key by its id")
    r.add_argument("key_id")
    p.set_defaults(func=cmd_keys)
